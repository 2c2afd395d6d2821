"""The ledger: outcomes leave in offset order; commits cover only acknowledged prefixes."""

from __future__ import annotations

from pipelines.errors import DecodeError, TooLarge
from stream.types import DeadLetter, Envelope, Outcome, Partition, Result
from stream.worker.ledger import Ledger
from tests.unit.stream.support import envelope


def _reserve(ledger: Ledger, offsets: range, partition: int = 0, rows: int = 1) -> list[Envelope]:
    envelopes = [envelope(b"x" * 10, offset=o, partition=partition) for o in offsets]
    for item in envelopes:
        ledger.reserve(item, rows)
    return envelopes


def _result(item: Envelope) -> Result:
    return Result(item, b"result", (), 1)


def _offsets(outcomes: list[Outcome]) -> list[tuple[int, int]]:
    return [(o.envelope.partition.index, o.envelope.offset) for o in outcomes]


def test_outcomes_resolved_out_of_order_are_released_in_offset_order() -> None:
    """An outcome waits for every earlier offset of its partition to be resolved."""
    ledger = Ledger()
    items = _reserve(ledger, range(4))
    ledger.resolve(_result(items[2]))
    ledger.resolve(DeadLetter(items[3], DecodeError("not a request")))
    assert list(ledger.ready()) == []
    ledger.resolve(_result(items[0]))
    assert _offsets(list(ledger.ready())) == [(0, 0)]
    ledger.resolve(_result(items[1]))
    released = list(ledger.ready())
    assert _offsets(released) == [(0, 1), (0, 2), (0, 3)]
    assert isinstance(released[-1], DeadLetter)
    assert list(ledger.ready()) == []


def test_a_blocked_partition_does_not_hold_back_another() -> None:
    """Order is kept per partition: partition 1 publishes while partition 0 waits."""
    ledger = Ledger()
    first = _reserve(ledger, range(2), partition=0)
    second = _reserve(ledger, range(2), partition=1)
    ledger.resolve(_result(first[1]))
    for item in second:
        ledger.resolve(_result(item))
    assert _offsets(list(ledger.ready())) == [(1, 0), (1, 1)]


def test_a_held_partition_releases_nothing_until_it_is_no_longer_held() -> None:
    """Outcomes of a held partition wait, in order, while other partitions publish."""
    ledger = Ledger()
    first = _reserve(ledger, range(2), partition=0)
    second = _reserve(ledger, range(1), partition=1)
    for item in first + second:
        ledger.resolve(_result(item))
    assert _offsets(list(ledger.ready(held={first[0].partition}))) == [(1, 0)]
    assert _offsets(list(ledger.ready())) == [(0, 0), (0, 1)]


def test_a_partition_held_while_its_outcomes_are_produced_stops_there() -> None:
    """An outcome whose production holds its partition is the last one released."""
    ledger = Ledger()
    items = _reserve(ledger, range(3))
    for item in items:
        ledger.resolve(_result(item))
    held: set[Partition] = set()
    released = []
    for outcome in ledger.ready(held):
        released.append(outcome)
        held.add(outcome.envelope.partition)  # e.g. its delivery failed at once
    assert _offsets(released) == [(0, 0)]
    assert _offsets(list(ledger.ready())) == [(0, 1), (0, 2)]


def test_commit_advances_only_over_the_contiguous_acknowledged_prefix() -> None:
    """Acknowledging offset 5 before 4 leaves the commit at 4 until 4 is acknowledged."""
    ledger = Ledger()
    items = _reserve(ledger, range(3, 6))
    for item in items:
        ledger.resolve(_result(item))
    list(ledger.ready())
    assert ledger.committable() == {}
    ledger.ack(items[0])
    assert ledger.committable() == {items[0].partition: 4}
    ledger.ack(items[2])
    assert ledger.committable() == {items[0].partition: 4}
    ledger.ack(items[1])
    assert ledger.committable() == {items[0].partition: 6}


def test_in_flight_rows_and_bytes_return_to_zero_once_acknowledged() -> None:
    """Rows and bytes count from consumption until acknowledgement, then drop to zero; the
    bytes of a result count beside its request's from when it is known."""
    ledger = Ledger()
    items = _reserve(ledger, range(3), rows=4)
    assert (ledger.pending, ledger.pending_rows, ledger.pending_bytes) == (3, 12, 30)
    for item in items:
        ledger.resolve(_result(item))
    assert ledger.pending_bytes == 3 * (10 + len(b"result"))
    list(ledger.ready())
    ledger.ack(items[0])
    assert (ledger.pending, ledger.pending_rows, ledger.pending_bytes) == (2, 8, 32)
    ledger.ack(items[2])
    ledger.ack(items[1])
    assert (ledger.pending, ledger.pending_rows, ledger.pending_bytes) == (0, 0, 0)


def test_a_dead_letter_counts_its_request_bytes_again_unless_too_large() -> None:
    """A dead letter carries the request's bytes to the producer a second time; a too_large
    one is published without them."""
    ledger = Ledger()
    decode, large = _reserve(ledger, range(2))
    ledger.resolve(DeadLetter(decode, DecodeError("not a request")))
    ledger.resolve(DeadLetter(large, TooLarge("over the limit")))
    assert ledger.pending_bytes == 10 + 10 + 10


def test_sent_through_covers_what_was_handed_to_the_producer() -> None:
    """A transaction may commit past offsets that were sent but not yet acknowledged."""
    ledger = Ledger()
    items = _reserve(ledger, range(3))
    partition = ledger.partitions[items[0].partition]
    assert partition.sent_through() is None
    ledger.resolve(_result(items[0]))
    ledger.resolve(_result(items[1]))
    list(ledger.ready())
    assert partition.sent_through() == 2
    ledger.ack(items[0])
    ledger.ack(items[1])
    assert partition.sent_through() == 2


def test_forget_drops_revoked_partitions() -> None:
    """A revoked partition leaves the counts and commits; its late acknowledgements are ignored."""
    ledger = Ledger()
    kept = _reserve(ledger, range(2), partition=0)
    revoked = _reserve(ledger, range(2), partition=1)
    for item in kept + revoked:
        ledger.resolve(_result(item))
    list(ledger.ready())
    ledger.ack(revoked[0])
    ledger.forget([revoked[0].partition])
    assert ledger.committable() == {}
    assert (ledger.pending, ledger.pending_rows) == (2, 2)
    ledger.ack(revoked[1])
    ledger.ack(kept[0])
    assert ledger.committable() == {kept[0].partition: 1}


def test_a_late_acknowledgement_does_not_ack_an_offset_consumed_again() -> None:
    """After a revocation, a delivery report from before it cannot complete the re-read offset."""
    ledger = Ledger()
    (before,) = _reserve(ledger, range(1))
    ledger.resolve(_result(before))
    list(ledger.ready())
    ledger.forget([before.partition])
    (again,) = _reserve(ledger, range(1))
    ledger.ack(before)  # the old result's delivery report arrives late
    assert ledger.committable() == {}
    assert ledger.pending_rows == 1
    ledger.resolve(_result(again))
    assert _offsets(list(ledger.ready())) == [(0, 0)]
    ledger.ack(again)
    assert ledger.committable() == {before.partition: 1}
    assert ledger.pending_rows == 0
