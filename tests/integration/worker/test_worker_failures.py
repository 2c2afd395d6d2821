"""`headrace run` with requests it cannot serve: one dead letter each, neighbours served."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipelines.formats import Format
from tests.integration.support import Topics
from tests.integration.workers import (
    CCFRAUD_STEPS,
    Fleet,
    Ids,
    Record,
    Request,
    Sent,
    ccfraud_table,
    content_type,
    decode_rows,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration

# A python step module: `explode` raises on a row whose id is -1, `stall` sleeps past its
# timeout on a row whose id is -2. Both pass the model's output through.
FAULTY = textwrap.dedent(
    """
    import time

    import pyarrow.compute as pc


    def _has(table, marker):
        return pc.any(pc.equal(table["id"], marker)).as_py()


    def explode(table, context):
        if _has(table, -1):
            raise ValueError("row with id -1 is poison")
        return table.select(["dense_1"])


    def stall(table, context):
        if _has(table, -2):
            time.sleep(1.5)
        return table.select(["dense_1"])
    """
)


def _assert_dead_letter(record: Record, sent: Sent, topics: Topics, error_type: str) -> None:
    """The SPEC §5 dead letter of ``sent``: its key, value and headers, then the error's."""
    request = sent.request
    assert record.key == request.key
    assert record.value == request.value
    assert record.headers[: len(request.headers)] == request.headers
    assert record.header("x-error-type") == error_type
    assert record.header("x-source-topic") == topics.input
    assert record.source == sent.where
    assert record.header("x-consumer-group") == topics.group_id
    assert int(record.header("x-source-timestamp")) > 0
    assert datetime.fromisoformat(record.header("x-failed-at")).tzinfo is not None
    assert record.has_header("x-error-step")


def test_malformed_requests_are_dead_lettered_and_neighbours_served(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """Each undecodable or misfit request gets one decode/schema dead letter naming the
    problem; the good requests of the same burst, and those sent after, are served."""
    topics = new_topics(partitions=4)
    config = write_config(tmp_path, topics)
    ids = Ids()
    arrow = encode(ccfraud_table(ids.take(5)), Format.ARROW_STREAM)
    short = pa.table({"tensor": [[0.5] * 28], "id": [7]})
    bad = {
        "garbage": (b"\x00\x01\xfe garbage \xff", [], "decode_error", ["neither Arrow IPC"]),
        "truncated": (
            arrow[: len(arrow) // 2],
            content_type(Format.ARROW_STREAM),
            "decode_error",
            ["truncated or corrupt Arrow IPC stream"],
        ),
        "wrong-shape": (b"[[1, 2], [3]]", [], "decode_error", ["list of objects"]),
        "wrong-column": (
            orjson.dumps([{"tensr": [0.5] * 29, "id": 1}]),
            [],
            "schema_error",
            ["missing column 'tensor'", "tensr"],
        ),
        "strings": (
            orjson.dumps([{"tensor": ["a"] * 29, "id": 2}]),
            content_type(Format.PANDAS_RECORDS),
            "schema_error",
            ["'tensor'", "float", "string"],
        ),
        "short-json": (
            orjson.dumps({"tensor": [0.5] * 28, "id": 3}),
            [],
            "schema_error",
            ["'tensor'", "28", "29"],
        ),
        "short-arrow": (
            encode(short, Format.ARROW_STREAM),
            content_type(Format.ARROW_STREAM),
            "schema_error",
            ["'tensor'", "28", "29"],
        ),
    }
    requests: list[Request] = []
    good: list[int] = []
    for round_ in range(2):
        for name, (value, headers, _, _) in bad.items():
            for fmt in (Format.ARROW_STREAM, Format.PANDAS_RECORDS):
                good.append(len(requests))
                table = ccfraud_table(ids.take(3), seed=len(requests))
                requests.append(Request(encode(table, fmt), f"good-{len(requests)}".encode(), []))
            marker = [("trace", f"{name}-{round_}".encode()), ("x-request-id", name.encode())]
            requests.append(Request(value, f"{name}-{round_}".encode(), [*headers, *marker]))
    fleet.start(config)
    producer = fleet.requests(topics)
    sent = producer.send(requests)
    outputs = fleet.outputs(topics)

    missing = outputs.wait_answered(sent, timeout=30)
    outputs.settle()

    assert not missing
    assert {s.partition for s in sent} == {0, 1, 2, 3}
    assert Counter(r.source for r in outputs.results + outputs.dead_letters) == Counter(
        s.where for s in sent
    )
    dead = {r.source: r for r in outputs.dead_letters}
    assert len(dead) == 2 * len(bad)
    for s in sent:
        if s.request.key is None or s.request.key.startswith(b"good-"):
            continue
        name = s.request.key.decode().rsplit("-", 1)[0]
        _, _, error_type, phrases = bad[name]
        record = dead[s.where]
        _assert_dead_letter(record, s, topics, error_type)
        assert record.header("x-attempts") == "1"
        message = record.header("x-error-message")
        for phrase in phrases:
            assert phrase in message, f"{name}: {phrase!r} not in {message!r}"
    results = {r.source: r for r in outputs.results}
    assert {sent[n].where for n in good} == set(results)

    # still serving after the poison
    later = producer.send(
        Request(encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM), b"later") for _ in range(4)
    )
    assert not outputs.wait_answered(later, timeout=20)
    served_later = [r for r in outputs.results if r.key == b"later"]
    assert [decode_rows(r).num_rows for r in served_later] == [2, 2, 2, 2]
    assert len(outputs.dead_letters) == 2 * len(bad)
    assert fleet.workers[0].process.poll() is None


def test_failing_and_stalling_steps_dead_letter_only_their_requests(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A python step that raises, or sleeps past timeout_ms, on one row dead-letters only that
    request after 1 + retries attempts (step_error / step_timeout naming the step)."""
    topics = new_topics(partitions=4)
    steps = [
        CCFRAUD_STEPS[0],
        {
            "python": {"name": "explode", "function": "faulty:explode"},
            "retries": 2,
            "backoff_ms": 10,
        },
        {
            "python": {"name": "stall", "function": "faulty:stall"},
            "timeout_ms": 300,
            "retries": 1,
            "backoff_ms": 10,
        },
        CCFRAUD_STEPS[1],
    ]
    config = write_config(
        tmp_path, topics, steps=steps, modules={"faulty": FAULTY}, batching={"max_wait_ms": 50}
    )
    ids = Ids()
    poison = {5: -1, 14: -2, 23: -1, 30: -2}  # request number -> marker row id
    requests, tables = [], []
    for number in range(36):
        row_ids = ids.take(1 + number % 6)
        if number in poison:
            row_ids.insert(len(row_ids) // 2, poison[number])
        table = ccfraud_table(row_ids, seed=number)
        tables.append(table)
        requests.append(
            Request(
                encode(table, Format.ARROW_STREAM),
                f"key-{number % 8}".encode(),
                [*content_type(Format.ARROW_STREAM), ("trace", str(number).encode())],
            )
        )
    producer = fleet.requests(topics)
    sent = producer.send(requests)  # queued before the worker starts: they share batches
    fleet.start(config)
    outputs = fleet.outputs(topics)

    missing = outputs.wait_answered(sent, timeout=60)
    outputs.settle()

    assert not missing
    assert Counter(r.source for r in outputs.results + outputs.dead_letters) == Counter(
        s.where for s in sent
    )
    dead = {r.source: r for r in outputs.dead_letters}
    assert set(dead) == {sent[n].where for n in poison}
    for number, marker in poison.items():
        record = dead[sent[number].where]
        if marker == -1:
            _assert_dead_letter(record, sent[number], topics, "step_error")
            assert record.header("x-error-step") == "explode"
            assert record.header("x-attempts") == "3"
            assert "row with id -1 is poison" in record.header("x-error-message")
        else:
            _assert_dead_letter(record, sent[number], topics, "step_timeout")
            assert record.header("x-error-step") == "stall"
            assert record.header("x-attempts") == "2"
            assert "timeout of 300 ms" in record.header("x-error-message")
    for r in outputs.results:
        number = int(dict(r.headers)["trace"])
        assert decode_rows(r)["in.id"].to_pylist() == tables[number]["id"].to_pylist()


def test_oversized_results_and_requests_are_dead_lettered(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """With kafka.max_message_bytes 2048, a small request whose result is bigger becomes an
    output_error dead letter, a bigger request a too_large one with an empty value."""
    topics = new_topics(partitions=1)
    config = write_config(tmp_path, topics, kafka={"max_message_bytes": 2048})
    ids = Ids()
    # JSON floats echo as in.* with more digits: 12 rows of 0.1s grow from ~1.6 kB to ~2.8 kB
    grows = orjson.dumps([{"tensor": [0.1] * 29, "id": i} for i in ids.take(12)])
    huge = encode(ccfraud_table(ids.take(20)), Format.ARROW_STREAM)
    small = encode(ccfraud_table(ids.take(1)), Format.ARROW_STREAM)
    assert len(grows) < 2048 < len(huge)
    requests = [
        Request(small, b"small-1"),
        Request(grows, b"grows", [("trace", b"g")]),
        Request(small, b"small-2"),
        Request(huge, b"huge", [*content_type(Format.ARROW_STREAM), ("trace", b"h")]),
        Request(small, b"small-3"),
    ]
    fleet.start(config)
    sent = fleet.requests(topics).send(requests)
    outputs = fleet.outputs(topics)

    missing = outputs.wait_answered(sent, timeout=30)
    outputs.settle()

    assert not missing
    assert [r.key for r in outputs.results] == [b"small-1", b"small-2", b"small-3"]
    dead = {r.key: r for r in outputs.dead_letters}
    assert set(dead) == {b"grows", b"huge"}
    _assert_dead_letter(dead[b"grows"], sent[1], topics, "output_error")
    assert "2048" in dead[b"grows"].header("x-error-message")
    too_large = dead[b"huge"]
    assert too_large.value == b""
    assert too_large.headers[:2] == requests[3].headers
    assert too_large.header("x-error-type") == "too_large"
    assert too_large.header("x-original-bytes") == str(len(huge))
    assert too_large.source == sent[3].where
    assert "2048" in too_large.header("x-error-message")
