"""The in-memory fakes behave like the broker and clients they stand in for."""

from __future__ import annotations

import pytest

from stream.kafka.fakes import FakeBroker, FakeClock, FakeConsumer, FakeProducer
from stream.types import Partition

_IN = "in"


def _broker(partitions: int = 2) -> FakeBroker:
    broker = FakeBroker()
    broker.create_topic(_IN, partitions)
    return broker


class _Rebalances:
    def __init__(self) -> None:
        self.assigned: list[list[Partition]] = []
        self.revoked: list[list[Partition]] = []

    def on_assign(self, partitions: list[Partition]) -> None:
        self.assigned.append(partitions)

    def on_revoke(self, partitions: list[Partition]) -> None:
        self.revoked.append(partitions)


def _consumer(broker: FakeBroker) -> tuple[FakeConsumer, _Rebalances]:
    consumer, seen = FakeConsumer(broker, "group"), _Rebalances()
    consumer.subscribe([_IN], seen.on_assign, seen.on_revoke)
    return consumer, seen


def test_the_clock_moves_only_when_advanced() -> None:
    """Advances add up exactly, the wall clock follows, and time never goes back."""
    clock = FakeClock(epoch_ms=1000)
    clock.advance(0.004)
    clock.advance(0.001)
    assert clock() == 0.005
    assert clock.wall_ms() == 1005
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


def test_the_first_consume_assigns_every_partition_and_reads_round_robin() -> None:
    """Records come in offset order per partition, alternating between partitions."""
    broker = _broker()
    for index, partition in enumerate((0, 0, 0, 1)):
        broker.append(_IN, f"m{index}".encode(), partition=partition)
    consumer, seen = _consumer(broker)
    got = consumer.consume(10, 1.0)
    assert seen.assigned == [[Partition(_IN, 0), Partition(_IN, 1)]]
    assert [(e.partition.index, e.offset) for e in got] == [(0, 0), (1, 0), (0, 1), (0, 2)]
    assert consumer.consume(10, 1.0) == []


def test_paused_partitions_give_nothing_until_resumed() -> None:
    """``pause`` holds a partition's records back; ``resume`` lets them through."""
    broker = _broker()
    broker.append(_IN, b"a", partition=0)
    broker.append(_IN, b"b", partition=1)
    consumer, _ = _consumer(broker)
    consumer.consume(0, 0)
    consumer.pause([Partition(_IN, 0)])
    assert [e.value for e in consumer.consume(10, 0)] == [b"b"]
    consumer.resume([Partition(_IN, 0)])
    assert [e.value for e in consumer.consume(10, 0)] == [b"a"]


def test_a_revoked_partition_resumes_from_its_committed_offset() -> None:
    """Revocation runs inside consume; a later assignment re-reads what was not committed."""
    broker = _broker(1)
    for value in (b"a", b"b", b"c"):
        broker.append(_IN, value)
    consumer, seen = _consumer(broker)
    assert len(consumer.consume(10, 0)) == 3
    consumer.commit({Partition(_IN, 0): 1}, asynchronous=True)
    consumer.revoke()
    assert seen.revoked == []
    assert consumer.consume(10, 0) == []
    assert seen.revoked == [[Partition(_IN, 0)]]
    assert consumer.assignment() == []
    consumer.assign([Partition(_IN, 0)])
    assert [e.value for e in consumer.consume(10, 0)] == [b"b", b"c"]
    assert broker.committed("group") == {Partition(_IN, 0): 1}


def test_produced_records_land_on_poll_with_their_delivery_reports() -> None:
    """A record is stored and acknowledged when the producer is polled, not before."""
    broker = _broker()
    producer = FakeProducer(broker)
    reports: list[str | None] = []
    producer.produce(
        _IN, b"v", key=b"k", headers=(("h", b"1"),), partition=1, on_delivery=reports.append
    )
    assert (broker.messages(_IN), reports) == ([], [])
    producer.poll(0)
    assert reports == [None]
    (record,) = broker.messages(_IN, 1)
    assert (record.key, record.value, record.headers, record.offset) == (
        b"k",
        b"v",
        (("h", b"1"),),
        0,
    )


def test_records_without_a_partition_go_by_key() -> None:
    """Equal keys land on the same partition."""
    broker = FakeBroker()
    broker.create_topic(_IN, 4)
    producer = FakeProducer(broker)
    reports: list[str | None] = []
    for _ in range(3):
        producer.produce(
            _IN, b"v", key=b"same", headers=(), partition=None, on_delivery=reports.append
        )
    producer.flush(1)
    assert reports == [None, None, None]
    assert len({record.partition for record in broker.messages(_IN)}) == 1


def test_scripted_failures_hit_the_next_deliveries_to_their_topic() -> None:
    """``fail_next`` fails the next deliveries (to one topic if named) with the given error."""
    broker = _broker()
    broker.create_topic("dlq")
    producer = FakeProducer(broker)
    reports: list[str | None] = []
    producer.fail_next(1, "denied", topic="dlq")
    for topic in (_IN, "dlq", "dlq"):
        producer.produce(topic, b"v", key=None, headers=(), partition=0, on_delivery=reports.append)
    producer.poll(0)
    assert reports == [None, "denied", None]
    assert len(broker.messages("dlq")) == 1


def test_held_deliveries_stay_unacknowledged_through_flush() -> None:
    """While held, poll and flush report nothing and flush says how many are left."""
    producer = FakeProducer(_broker())
    reports: list[str | None] = []
    producer.hold()
    producer.produce(_IN, b"v", key=None, headers=(), partition=0, on_delivery=reports.append)
    producer.poll(0)
    assert producer.flush(1) == 1
    assert reports == []
    producer.release()
    assert producer.flush(1) == 0
    assert reports == [None]


def test_flush_also_delivers_records_produced_by_delivery_callbacks() -> None:
    """A record produced from a delivery report is flushed too; poll leaves it for later."""
    broker = _broker()
    producer = FakeProducer(broker)
    reports: list[str | None] = []

    def then_produce(error: str | None) -> None:
        reports.append(error)
        producer.produce(
            _IN, b"second", key=None, headers=(), partition=0, on_delivery=reports.append
        )

    producer.produce(_IN, b"first", key=None, headers=(), partition=0, on_delivery=then_produce)
    producer.poll(0)
    assert producer.pending == 1
    assert producer.flush(1) == 0
    assert [r.value for r in broker.messages(_IN)] == [b"first", b"second"]


def test_deliveries_fail_for_a_missing_topic_or_an_oversized_value() -> None:
    """Unknown topics and values over ``max_message_bytes`` are refused, as by a broker."""
    producer = FakeProducer(_broker(), max_message_bytes=4)
    reports: list[str | None] = []
    producer.produce("nope", b"v", key=None, headers=(), partition=None, on_delivery=reports.append)
    producer.produce(_IN, b"12345", key=None, headers=(), partition=0, on_delivery=reports.append)
    producer.flush(1)
    assert [r.split(":")[0] for r in reports if r] == ["_UNKNOWN_TOPIC", "MSG_SIZE_TOO_LARGE"]
