"""A step that hangs costs a bounded time and never keeps the worker from a SIGTERM: what it
held is left uncommitted and served by the next worker."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines.formats import Format
from tests.integration.support import Topics
from tests.integration.workers import (
    CCFRAUD_STEPS,
    Fleet,
    Request,
    ccfraud_table,
    committed_offsets,
    content_type,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration

HANGS = textwrap.dedent(
    """
    import time

    import pyarrow.compute as pc


    def hang(table, context):
        if pc.any(pc.equal(table["id"], -1)).as_py():
            time.sleep(3600)
        return table.select(["dense_1"])
    """
)


def _request(row_id: int) -> Request:
    table = ccfraud_table([row_id], seed=abs(row_id))
    fmt = Format.ARROW_STREAM
    return Request(encode(table, fmt), b"k", content_type(fmt), partition=0)


def test_sigterm_during_a_hanging_step_exits_and_leaves_it_for_the_next_worker(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A worker stuck in a step with a long timeout exits 0 within half of
    `shutdown_timeout_s` after SIGTERM, having served the requests before the hanging one and
    committed nothing past it; a worker with a fixed step then serves the rest."""
    topics = new_topics(partitions=1)
    steps = [
        CCFRAUD_STEPS[0],
        {"python": {"name": "hang", "function": "hangs:hang"}, "timeout_ms": 600_000},
    ]
    config = write_config(
        tmp_path,
        topics,
        steps=steps,
        modules={"hangs": HANGS},
        batching={"max_rows": 1},
        processing={"shutdown_timeout_s": 4},
    )
    worker = fleet.start(config)
    outputs = fleet.outputs(topics)
    fleet.requests(topics).send([_request(1), _request(2), _request(-1), _request(3)])
    outputs.wait_for(results=2, timeout=30)
    time.sleep(1.0)  # the third request is now in its step, which sleeps for an hour

    stopped = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.log()
    assert time.monotonic() - stopped < 2 + 8  # the 2 s grace, plus a start-up's slack
    assert committed_offsets(topics) == {0: 2}  # requests 0 and 1 only

    settings = yaml.safe_load(config.read_text())
    settings["pipeline"]["steps"] = [CCFRAUD_STEPS[0], CCFRAUD_STEPS[1]]
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    fleet.start(config)
    outputs.wait_for(results=4, timeout=30)
    assert sorted(record.source[1] for record in outputs.results) == [0, 1, 2, 3]
    assert not outputs.dead_letters
