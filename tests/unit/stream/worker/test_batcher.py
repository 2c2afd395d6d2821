"""Micro-batching on a fake clock: full batches leave at once, others after ``max_wait_ms``."""

from __future__ import annotations

import itertools

import pyarrow as pa

from pipelines import formats
from pipelines.formats import Format
from stream.kafka.fakes import FakeClock
from stream.worker.batcher import Batch, Batcher
from stream.worker.decoding import Decoded, Selection
from tests.unit.stream.support import envelope

_ALL = Selection(("*",), ())
_offsets = itertools.count()


def _arrow(rows: int, column: str = "x", parameters: tuple[tuple[str, str], ...] = ()) -> Decoded:
    data = pa.table({column: pa.array(range(rows), pa.int64())})
    item = envelope(b"", offset=next(_offsets))
    return Decoded(item, Format.ARROW_STREAM, rows, _ALL, table=data, parameters=parameters)


def _records(payload: bytes) -> Decoded:
    rows = formats.parse_records(payload)
    item = envelope(payload, offset=next(_offsets))
    return Decoded(item, Format.PANDAS_RECORDS, len(rows), _ALL, records=rows)


def _offsets_of(batches: list[Batch]) -> list[list[int]]:
    return [[request.envelope.offset for request in batch.requests] for batch in batches]


def test_a_batch_leaves_as_soon_as_it_reaches_max_rows() -> None:
    """The request that fills a batch to ``max_rows`` flushes it, without waiting."""
    batcher = Batcher(max_rows=4, max_wait_ms=250, clock=FakeClock())
    first, second, third = _arrow(2), _arrow(1), _arrow(1)
    assert batcher.add(first) == []
    assert batcher.add(second) == []
    (batch,) = batcher.add(third)
    assert batch.requests == [first, second, third]
    assert batch.rows == 4
    assert batcher.rows == 0


def test_a_request_that_would_overflow_a_batch_starts_the_next_one() -> None:
    """A batch never goes over ``max_rows``: it leaves, and the request opens a new batch."""
    batcher = Batcher(max_rows=4, max_wait_ms=250, clock=FakeClock())
    first, second = _arrow(3), _arrow(2)
    batcher.add(first)
    (batch,) = batcher.add(second)
    assert batch.requests == [first]
    assert batcher.rows == 2


def test_a_batch_is_due_max_wait_ms_after_its_first_request_not_its_last() -> None:
    """Later requests do not extend the wait: the first request's age decides."""
    clock = FakeClock()
    batcher = Batcher(max_rows=100, max_wait_ms=250, clock=clock)
    first = _arrow(1)
    batcher.add(first)
    clock.advance(0.125)
    second = _arrow(1)
    batcher.add(second)
    clock.advance(0.124)
    assert batcher.due() == []
    clock.advance(0.001)
    (batch,) = batcher.due()
    assert batch.requests == [first, second]
    assert batcher.due() == []


def test_the_next_batch_waits_from_its_own_first_request() -> None:
    """After a batch left, the wait starts again with the next request."""
    clock = FakeClock()
    batcher = Batcher(max_rows=100, max_wait_ms=250, clock=clock)
    batcher.add(_arrow(1))
    clock.advance(0.25)
    assert len(batcher.due()) == 1
    clock.advance(0.125)
    batcher.add(_arrow(1))
    clock.advance(0.125)
    assert batcher.due() == []
    clock.advance(0.125)
    assert len(batcher.due()) == 1


def test_a_request_bigger_than_max_rows_is_a_batch_of_its_own() -> None:
    """An oversized request is served alone, after the open batch it could not join."""
    batcher = Batcher(max_rows=4, max_wait_ms=250, clock=FakeClock())
    small, big = _arrow(1), _arrow(10)
    batcher.add(small)
    batches = batcher.add(big)
    assert [batch.requests for batch in batches] == [[small], [big]]
    assert [batch.rows for batch in batches] == [1, 10]
    assert batcher.rows == 0


def test_requests_with_different_batch_keys_are_batched_separately() -> None:
    """Different columns, parameters or JSON record keys never share a micro-batch."""
    clock = FakeClock()
    batcher = Batcher(max_rows=100, max_wait_ms=250, clock=clock)
    requests = [
        _arrow(1, "x"),
        _arrow(1, "y"),
        _arrow(1, "x", parameters=(("threshold", "0.5"),)),
        _records(b'[{"a": 1}]'),
        _records(b'[{"b": 1}]'),
        _arrow(1, "x"),
        _records(b'[{"a": 2}, {"a": 3}]'),
        _arrow(1, "x", parameters=(("threshold", "0.5"),)),
    ]
    for request in requests:
        assert batcher.add(request) == []
    clock.advance(0.25)
    batches = batcher.due()
    offsets = [request.envelope.offset for request in requests]
    assert _offsets_of(batches) == [
        [offsets[0], offsets[5]],
        [offsets[1]],
        [offsets[2], offsets[7]],
        [offsets[3], offsets[6]],
        [offsets[4]],
    ]


def test_drain_returns_every_open_batch() -> None:
    """Shutdown and rebalance take every batch, due or not, and leave the batcher empty."""
    clock = FakeClock()
    batcher = Batcher(max_rows=100, max_wait_ms=250, clock=clock)
    first, second, third = _arrow(2, "x"), _arrow(1, "y"), _arrow(3, "x")
    for request in (first, second, third):
        batcher.add(request)
    batches = batcher.drain()
    assert [batch.requests for batch in batches] == [[first, third], [second]]
    assert batcher.rows == 0
    clock.advance(1)
    assert batcher.due() == []
    assert batcher.drain() == []
