"""Cooperative (incremental) rebalancing: `partition.assignment.strategy: cooperative-sticky`.

Two workers serve a steady load and a third joins. With the cooperative protocol only the
partitions that move to the newcomer are revoked, finished and committed; the first two keep
the others throughout. Nothing is lost, and every partition's results keep their order.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream.kafka.broker import free_port
from tests.integration.support import Topics, probe
from tests.integration.workers import Fleet, Request, WorkerProcess, assignments, write_config

pytestmark = pytest.mark.integration

_PARTITIONS = 6
_COOPERATIVE = {"properties": {"partition.assignment.strategy": "cooperative-sticky"}}
_GROUP_DEADLINE_S = 40.0  # a cooperative join on Tansu takes two rounds of ~3-5 s each


def _requests(count: int) -> list[Request]:
    """``count`` one-row JSON requests on 24 keys (every partition)."""
    return [
        Request(
            orjson.dumps({"tensor": [round(n % 97 / 50, 2)] * 29, "id": n}), f"k{n % 24}".encode()
        )
        for n in range(count)
    ]


def _held(port: int) -> int:
    """The partitions a worker holds, as its /readyz says (0 when not ready or not up yet)."""
    try:
        status, text = probe(port, "/readyz")
    except OSError:  # the metrics port is not open yet
        return 0
    found = re.search(r"ok: (\d+) partitions assigned", text)
    return int(found.group(1)) if status == 200 and found else 0


def _spread(counts: list[int]) -> bool:
    """Whether together the workers hold every partition, evenly (the sticky assignor's goal)."""
    return sum(counts) == _PARTITIONS and max(counts) - min(counts) <= 1


def _wait_spread(ports: list[int], timeout: float) -> list[int]:
    """Wait until the workers hold every partition evenly; the counts.

    A cooperative rebalance can take more than two rounds: between them a worker may still
    hold a partition the next round moves, so "all held" alone is not the end of it.
    """
    deadline = time.monotonic() + timeout
    counts = [_held(port) for port in ports]
    while not _spread(counts) and time.monotonic() < deadline:
        time.sleep(0.2)
        counts = [_held(port) for port in ports]
    return counts


def _replay(worker: WorkerProcess, since: int = 0) -> tuple[frozenset[int], frozenset[int]]:
    """From a worker's log: the partitions it holds now, and those revoked after event
    ``since`` (cooperative events carry increments)."""
    held: set[int] = set()
    revoked: set[int] = set()
    for number, event in enumerate(assignments(worker)):
        if event.event == "partitions assigned":
            held |= event.partitions
        else:
            held -= event.partitions
            if number >= since:
                revoked |= event.partitions
    return frozenset(held), frozenset(revoked)


def test_a_third_worker_joins_without_the_others_losing_what_they_keep(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """With cooperative-sticky, a worker joining two busy ones takes partitions from them;
    the partitions they keep are never revoked, each of the three counts on /readyz exactly
    what it holds, no request is lost and every partition's results come in input order."""
    topics = new_topics(partitions=_PARTITIONS)
    config = write_config(tmp_path, topics, kafka=_COOPERATIVE)
    ports = [free_port() for _ in range(3)]
    first = fleet.start(config, ready=False, env={"HEADRACE_METRICS__PORT": str(ports[0])})
    second = fleet.start(config, ready=False, env={"HEADRACE_METRICS__PORT": str(ports[1])})
    counts = _wait_spread(ports[:2], _GROUP_DEADLINE_S)
    assert _spread(counts), f"the first two do not share the partitions: {counts}"
    outputs = fleet.outputs(topics)
    stream = fleet.requests(topics).stream(_requests(2400), per_second=200)
    outputs.wait_for(results=300, timeout=30)

    marks = [len(assignments(first)), len(assignments(second))]
    third = fleet.start(config, ready=False, env={"HEADRACE_METRICS__PORT": str(ports[2])})
    _wait_spread(ports, _GROUP_DEADLINE_S)
    sent = stream.finish(timeout=60)
    missing = outputs.wait_answered(sent, timeout=60)
    outputs.settle()
    counts = _wait_spread(ports, _GROUP_DEADLINE_S)

    assert not missing, f"{len(missing)} requests lost"
    assert _spread(counts), f"partitions per worker: {counts}"
    moved: set[int] = set()
    for worker, mark in zip((first, second), marks, strict=True):
        held, revoked = _replay(worker, since=mark)
        assert held, f"worker {worker.pid} kept nothing: {assignments(worker)}"
        assert not held & revoked, f"kept partitions were revoked: {assignments(worker)}"
        moved |= revoked
    newcomer, _ = _replay(third)
    assert newcomer and newcomer == moved, (newcomer, moved)
    assert [len(_replay(w)[0]) for w in (first, second, third)] == counts
    seen: set[tuple[int, int]] = set()
    first_results: dict[int, list[int]] = {}  # input offsets by partition, as first answered
    for record in outputs.results:
        if record.source not in seen:
            seen.add(record.source)
            first_results.setdefault(record.source[0], []).append(record.source[1])
    assert all(o == sorted(o) for o in first_results.values()), "a partition's order broke"
    print(
        f"partitions per worker {counts}; moved to the newcomer {sorted(moved)}; "
        f"repeats {sum(outputs.duplicates().values())} of {len(sent)} requests"
    )
