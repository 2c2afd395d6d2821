"""What only the fakes do: the clock, round-robin reads, scripted rebalances and failures.

What the fakes share with Kafka is pinned for both backends by the contract suite,
``tests/integration/test_kafka_contract.py``.
"""

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


def _ignore(error: str | None) -> None:
    del error


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


def test_consume_reads_the_partitions_round_robin() -> None:
    """One record from each partition in turn, so no partition waits behind another."""
    broker = _broker()
    for index, partition in enumerate((0, 0, 0, 1)):
        broker.append(_IN, f"m{index}".encode(), partition=partition)
    consumer, _ = _consumer(broker)
    got = consumer.consume(10, 1.0)
    assert [(e.partition.index, e.offset) for e in got] == [(0, 0), (1, 0), (0, 1), (0, 2)]
    assert consumer.consume(10, 1.0) == []


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


def test_records_are_stamped_by_the_injected_wall_clock() -> None:
    """A produced record carries ``wall_clock_ms`` at ``produce``, not at delivery."""
    broker, clock = _broker(), FakeClock(epoch_ms=1000)
    producer = FakeProducer(broker, wall_clock_ms=clock.wall_ms)
    producer.produce(_IN, b"v", key=None, headers=(), partition=0, on_delivery=_ignore)
    clock.advance(1)
    producer.flush(1)
    assert [record.timestamp_ms for record in broker.messages(_IN)] == [1000]


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


def test_poll_leaves_records_produced_by_delivery_callbacks_for_later() -> None:
    """``poll`` reports only what was queued before it; a record produced meanwhile waits."""
    producer = FakeProducer(_broker())

    def then_produce(error: str | None) -> None:
        del error
        producer.produce(_IN, b"second", key=None, headers=(), partition=0, on_delivery=_ignore)

    producer.produce(_IN, b"first", key=None, headers=(), partition=0, on_delivery=then_produce)
    producer.poll(0)
    assert producer.pending == 1


def test_deliveries_to_a_missing_topic_fail() -> None:
    """A topic that does not exist is refused at delivery (the fake never creates topics)."""
    producer = FakeProducer(_broker())
    reports: list[str | None] = []
    producer.produce("nope", b"v", key=None, headers=(), partition=None, on_delivery=reports.append)
    producer.flush(1)
    assert [r.split(":")[0] for r in reports if r] == ["_UNKNOWN_TOPIC"]
