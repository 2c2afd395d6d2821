"""`headrace run` against requests built to break it (SPEC §5, "Isolation is absolute").

One worker serves one partition holding a good request, then each hostile request followed
by another good one. Every hostile request must come back as one dead letter naming its
problem, every good one as a result in input order, and the worker must still be running.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pytest
from confluent_kafka.admin import AdminClient

from pipelines.formats import Format
from stream.kafka.admin import ensure_topics
from tests.integration.support import Topics
from tests.integration.workers import (
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

MAX_DECODED_BYTES = 1_048_576  # processing.max_decoded_bytes of this worker
ARROW = content_type(Format.ARROW_STREAM)
OIP = content_type(Format.OIP)


def _repeated_column() -> bytes:
    table = ccfraud_table([1])
    doubled = pa.Table.from_arrays([*table.columns, table.column("id")], ["tensor", "id", "id"])
    return encode(doubled, Format.ARROW_STREAM)


def _oip(shape: list[int]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "tensor", "shape": shape, "datatype": "FP32", "data": []}]}
    )


def _inflating() -> bytes:
    """20,000 rows of 29 zero floats (2.3 MB decoded) in a ZSTD-compressed Arrow stream."""
    tensor = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(20_000 * 29, np.float32)), 29)
    zeros = pa.table({"tensor": tensor.cast(pa.list_(pa.float32())), "id": [0] * 20_000})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, zeros.schema, options=options) as writer:
        writer.write_table(zeros)
    payload = bytes(sink.getvalue().to_pybytes())
    assert len(payload) < MAX_DECODED_BYTES < zeros.nbytes
    return payload


def _undecodable_name() -> bytes:
    """An Arrow stream one byte of which was changed: a column name is no longer UTF-8."""
    payload = bytearray(encode(ccfraud_table([1]), Format.ARROW_STREAM))
    payload[payload.index(b"tensor")] = 0xFF
    return bytes(payload)


def _claims_billions() -> bytes:
    """An Arrow stream whose record batch says it holds 2**40 rows of nulls."""
    payload = bytearray(encode(pa.table({"x": pa.nulls(3)}), Format.ARROW_STREAM))
    for _ in range(2):  # the batch's length, then its field node's
        at = payload.index((3).to_bytes(8, "little"), payload.index(b"\xff" * 4, 8))
        payload[at : at + 8] = (2**40).to_bytes(8, "little")
    return bytes(payload)


# name -> (payload, headers, x-error-type, phrases the message must hold)
HOSTILE: dict[str, tuple[bytes, list[tuple[str, bytes]], str, list[str]]] = {
    "repeated-column": (_repeated_column(), ARROW, "schema_error", ["column 'id' appears 2"]),
    "int32-shape": (
        _oip([1, 0, 4_294_967_296]),
        OIP,
        "decode_error",
        ["shape [1, 0, 4294967296] does not fit a list column"],
    ),
    "billions-shape": (
        _oip([3_000_000_000, 0]),
        OIP,
        "too_large",
        ["3000000000 rows", "processing.max_request_rows"],
    ),
    "inflating-arrow": (
        _inflating(),
        ARROW,
        "too_large",
        [f"over the limit of {MAX_DECODED_BYTES} bytes (processing.max_decoded_bytes)"],
    ),
    "mutated-name": (_undecodable_name(), ARROW, "decode_error", ["column name that is not UTF-8"]),
    "mutated-length": (_claims_billions(), ARROW, "too_large", ["1099511627776 rows"]),
    "undecodable-dataset": (
        encode(ccfraud_table([1]), Format.ARROW_STREAM),
        [("x-dataset", b"out\xff"), ("x-request-id", b"\xfe")],
        "schema_error",
        ["dataset names 'out\ufffd'"],
    ),
    "undecodable-content-type": (
        encode(ccfraud_table([1]), Format.PANDAS_RECORDS),
        [("content-type", b"application/json\xff")],
        "decode_error",
        ["unsupported content-type 'application/json\ufffd'"],
    ),
}


@dataclass(frozen=True, slots=True)
class Run:
    """What one worker made of the hostile requests and their good neighbours."""

    sent: list[Sent]
    missing: set[tuple[int, int]]
    results: list[Record]
    dead_letters: dict[str, Record]  # by the hostile request's name
    alive: bool


@pytest.fixture(scope="module")
def run(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One worker (max_decoded_bytes 1 MiB) serving, on one partition, a good request, then
    each hostile request followed by a good one; the good ones carry odd header bytes too."""
    suffix = uuid.uuid4().hex[:12]
    topics = Topics(
        bootstrap, f"iso-in-{suffix}", f"iso-out-{suffix}", f"iso-dlq-{suffix}", suffix, 1
    )
    ensure_topics(bootstrap, dict.fromkeys(topics.names, 1))
    directory = tmp_path_factory.mktemp("isolation")
    fleet = Fleet(directory)
    ids = Ids()
    odd = [("x-request-id", b"caf\xc3"), ("x-param-mode", b"\xff"), ("trace", b"\x80")]
    requests = [Request(encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM), b"good", odd)]
    for name, (payload, headers, _, _) in HOSTILE.items():
        requests.append(Request(payload, name.encode(), headers))
        requests.append(Request(encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM), b"good"))
    try:
        config = write_config(
            directory, topics, processing={"max_decoded_bytes": MAX_DECODED_BYTES}
        )
        worker = fleet.start(config)
        sent = fleet.requests(topics).send(requests)
        outputs = fleet.outputs(topics)
        missing = outputs.wait_answered(sent, timeout=30)
        outputs.settle()
        by_name = {(r.key or b"").decode(): r for r in outputs.dead_letters}
        yield Run(sent, missing, outputs.results, by_name, worker.process.poll() is None)
    finally:
        fleet.close()
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(topics.names).values():
            with contextlib.suppress(Exception):  # best effort
                future.result(timeout=10)


def test_the_worker_outlives_every_hostile_request(run: Run) -> None:
    """The worker is still running, and each request got exactly one answer."""
    assert run.alive
    assert not run.missing
    answered = Counter(r.source for r in [*run.results, *run.dead_letters.values()])
    assert answered == Counter(s.where for s in run.sent)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_request_is_dead_lettered_naming_its_problem(run: Run, name: str) -> None:
    """Each hostile request is one dead letter of the expected type whose message says why."""
    payload, _, error_type, phrases = HOSTILE[name]
    record = run.dead_letters[name]
    assert record.header("x-error-type") == error_type
    if record.value != payload:  # too_large: the letter points at the request (SPEC §5)
        assert error_type == "too_large"
        assert (record.value, record.header("x-original-bytes")) == (b"", str(len(payload)))
    message = record.header("x-error-message")
    for phrase in phrases:
        assert phrase in message


def test_the_neighbours_of_hostile_requests_are_served_in_order(run: Run) -> None:
    """Every good request before and after a hostile one gets its rows back, in input order,
    odd header bytes included."""
    good = [s for s in run.sent if s.request.key == b"good"]
    assert [r.source for r in run.results] == [s.where for s in good]
    assert [decode_rows(r)["in.id"].to_pylist() for r in run.results] == [
        [2 * n, 2 * n + 1] for n in range(len(good))
    ]
    first = run.results[0]
    assert first.header("x-request-id") == "caf\ufffd"
    assert dict(first.headers)["trace"] == b"\x80"
