"""`headrace run` with a broken model: the guardrail stops it draining the input topic."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.formats import Format
from stream.kafka.broker import free_port
from tests.integration.support import Topics, probe
from tests.integration.workers import (
    CCFRAUD_STEPS,
    Fleet,
    Ids,
    Request,
    ccfraud_table,
    committed_offsets,
    content_type,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration

BROKEN = textwrap.dedent(
    """
    def run(table, context):
        raise ValueError("weights are NaN")
    """
)


def _committed(topics: Topics, wanted: int, timeout: float) -> int:
    """The committed offset of partition 0 once it reaches ``wanted``, or at the deadline."""
    deadline = time.monotonic() + timeout
    while (found := committed_offsets(topics)[0]) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_the_guardrail_stops_a_broken_model_until_a_reload_fixes_it(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A step that always raises, with max_consecutive_failures 5: five dead letters, the rest
    left on the topic, /readyz 503 naming the guardrail (/healthz 200); after a reload with a
    fixed config the rest are served."""
    topics = new_topics(partitions=1)
    broken = {"python": {"name": "broken", "function": "broken:run"}, "retries": 0}
    batching, processing = {"max_rows": 1}, {"max_consecutive_failures": 5}
    config = write_config(
        tmp_path,
        topics,
        steps=[CCFRAUD_STEPS[0], broken, CCFRAUD_STEPS[1]],
        modules={"broken": BROKEN},
        batching=batching,
        processing=processing,
    )
    port = free_port()
    worker = fleet.start(config, env={"HEADRACE_METRICS__PORT": str(port)})
    outputs = fleet.outputs(topics)
    ids = Ids()
    requests = [
        Request(
            encode(ccfraud_table(ids.take(1), seed=n), Format.PANDAS_RECORDS),
            f"key-{n}".encode(),
            content_type(Format.PANDAS_RECORDS),
        )
        for n in range(20)
    ]
    sent = fleet.requests(topics).send(requests)

    assert worker.wait_for_log("guardrail tripped", timeout=30)
    outputs.wait_for(dead_letters=5, timeout=10)
    assert _committed(topics, 5, timeout=10) == 5
    outputs.settle(quiet=1.0)
    assert [r.source for r in outputs.dead_letters] == [(0, n) for n in range(5)]
    assert {r.header("x-error-type") for r in outputs.dead_letters} == {"step_error"}
    assert not outputs.results
    status, reason = probe(port, "/readyz")
    assert status == 503
    assert "guardrail: 5 requests in a row failed in the steps" in reason
    assert "'broken'" in reason and "weights are NaN" in reason
    assert probe(port, "/healthz") == (200, "ok\n")
    assert committed_offsets(topics)[0] == 5

    fixed = write_config(tmp_path, topics, batching=batching, processing=processing)
    config.write_text(fixed.read_text())
    worker.signal(signal.SIGHUP)
    assert worker.wait_for_log("pipeline reloaded", timeout=15)
    assert not outputs.wait_answered(sent, timeout=30)
    outputs.settle()
    assert sorted(r.source for r in outputs.results) == [(0, n) for n in range(5, 20)]
    assert len(outputs.dead_letters) == 5
    assert probe(port, "/readyz")[0] == 200
    assert _committed(topics, 20, timeout=10) == 20
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
