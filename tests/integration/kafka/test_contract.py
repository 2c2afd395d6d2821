"""One contract for both backends: what the worker relies on from ``Consumer`` and ``Producer``.

Every test runs twice: against the in-memory fakes (``fake``) and against the confluent-kafka
adapters on the session's real Kafka-protocol broker (``kafka``). The fake is only as good as
its likeness to Kafka, so a behaviour pinned here holds for both; where they differ, the fake
is fixed. A backend hands out fresh topics, consumers of one group, and producers.

Kafka is slow where the fake is instant (a group join takes ~3 s on the embedded broker, a
delivery a few ms), so waits are polls until a deadline, never fixed sleeps; proving that
nothing arrives takes :attr:`Backend.quiet_s` of silence.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import pytest

from pipelines.config import KafkaSettings
from stream.kafka.clients import KafkaConsumer, KafkaProducer
from stream.kafka.config import consumer_config, producer_config
from stream.kafka.fakes import FakeBroker, FakeConsumer, FakeProducer
from stream.kafka.protocols import Consumer, Producer
from stream.types import Envelope, Partition
from tests.integration.support import Topics

_DEADLINE_S = 20.0  # a group join (~3 s on Tansu) or a delivery, with room to spare
_POLL_S = 0.1
_MESSAGE_LIMIT = 10_000  # bytes, for the producer that refuses larger records


class Backend(ABC):
    """Fresh topics, consumers of this test's group, and producers, on one kind of broker."""

    quiet_s: float  # how long nothing must arrive to show that nothing will

    def __init__(self) -> None:
        self.group = f"contract-{uuid.uuid4().hex[:12]}"
        self._consumers: list[Consumer] = []

    @abstractmethod
    def topic(self, partitions: int = 1) -> str:
        """A new empty topic with ``partitions`` partitions."""

    @abstractmethod
    def producer(self, *, max_message_bytes: int | None = None) -> Producer:
        """A new producer; records over ``max_message_bytes`` are refused."""

    @abstractmethod
    def _new_consumer(self) -> Consumer: ...

    def consumer(self) -> Consumer:
        """A new consumer in :attr:`group`, reading from the start when nothing is committed."""
        consumer = self._new_consumer()
        self._consumers.append(consumer)
        return consumer

    def close(self) -> None:
        """Close the consumers the test left open (closing twice is harmless)."""
        for consumer in self._consumers:
            consumer.close()


class _FakeBackend(Backend):
    quiet_s = 0.0  # the fake never waits: one empty consume shows there is nothing

    def __init__(self) -> None:
        super().__init__()
        self.broker = FakeBroker()

    def topic(self, partitions: int = 1) -> str:
        name = f"contract-{uuid.uuid4().hex[:12]}"
        self.broker.create_topic(name, partitions)
        return name

    def _new_consumer(self) -> Consumer:
        return FakeConsumer(self.broker, self.group)

    def producer(self, *, max_message_bytes: int | None = None) -> Producer:
        return FakeProducer(self.broker, max_message_bytes=max_message_bytes)


class _KafkaBackend(Backend):
    quiet_s = 0.5  # ~100 fetches at fetch.wait.max.ms=5: a record would have come

    def __init__(self, new_topics: Callable[..., Topics], bootstrap: str) -> None:
        super().__init__()
        self._new_topics = new_topics
        self._bootstrap = bootstrap

    def topic(self, partitions: int = 1) -> str:
        return self._new_topics(partitions).input

    def _new_consumer(self) -> Consumer:
        return KafkaConsumer(consumer_config(KafkaSettings(group_id=self.group), self._bootstrap))

    def producer(self, *, max_message_bytes: int | None = None) -> Producer:
        limit = {} if max_message_bytes is None else {"message.max.bytes": max_message_bytes}
        return KafkaProducer(producer_config(KafkaSettings(), self._bootstrap, **limit))


@pytest.fixture(params=["fake", pytest.param("kafka", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The backend under test: the in-memory fakes, or the adapters on the real broker."""
    chosen: Backend
    if request.param == "fake":
        chosen = _FakeBackend()
    else:
        chosen = _KafkaBackend(
            request.getfixturevalue("new_topics"), request.getfixturevalue("bootstrap")
        )
    try:
        yield chosen
    finally:
        chosen.close()


class _Rebalances:
    """The rebalance callbacks a consumer made, and whether each came from inside a call."""

    def __init__(self) -> None:
        self.assigned: list[list[Partition]] = []
        self.revoked: list[list[Partition]] = []
        self.inside: list[bool] = []  # one per callback: was a consume or close running?
        self.busy = False

    def on_assign(self, partitions: list[Partition]) -> None:
        self.assigned.append(sorted(partitions))
        self.inside.append(self.busy)

    def on_revoke(self, partitions: list[Partition]) -> None:
        self.revoked.append(sorted(partitions))
        self.inside.append(self.busy)


class _Reports:
    """Delivery reports, each noted with whether a poll or flush was running."""

    def __init__(self) -> None:
        self.errors: list[str | None] = []
        self.inside: list[bool] = []
        self.busy = False

    def __call__(self, error: str | None) -> None:
        self.errors.append(error)
        self.inside.append(self.busy)

    def poll_until(self, producer: Producer, count: int) -> None:
        """Poll until ``count`` reports came or the deadline passed."""
        deadline = time.monotonic() + _DEADLINE_S
        while len(self.errors) < count and time.monotonic() < deadline:
            self.busy = True
            producer.poll(_POLL_S)
            self.busy = False

    def flush(self, producer: Producer) -> int:
        self.busy = True
        try:
            return producer.flush(_DEADLINE_S)
        finally:
            self.busy = False


def _subscribed(backend: Backend, topic: str) -> tuple[Consumer, _Rebalances]:
    consumer, seen = backend.consumer(), _Rebalances()
    consumer.subscribe([topic], seen.on_assign, seen.on_revoke)
    return consumer, seen


def _consume(consumer: Consumer, seen: _Rebalances, count: int) -> list[Envelope]:
    """Consume until ``count`` records came (never asking for more) or the deadline passed."""
    found: list[Envelope] = []
    deadline = time.monotonic() + _DEADLINE_S
    while len(found) < count and time.monotonic() < deadline:
        seen.busy = True
        found += consumer.consume(count - len(found), _POLL_S)
        seen.busy = False
    return found


def _join(consumer: Consumer, seen: _Rebalances) -> None:
    """Consume until the partitions are assigned (the topic must still be empty)."""
    deadline = time.monotonic() + _DEADLINE_S
    while not seen.assigned and time.monotonic() < deadline:
        seen.busy = True
        assert consumer.consume(1, _POLL_S) == []
        seen.busy = False
    assert seen.assigned, "no partitions assigned before the deadline"


def _quiet(consumer: Consumer, seen: _Rebalances, backend: Backend) -> list[Envelope]:
    """Whatever arrives in ``backend.quiet_s`` (at least one consume)."""
    found: list[Envelope] = []
    deadline = time.monotonic() + backend.quiet_s
    while True:
        seen.busy = True
        found += consumer.consume(100, _POLL_S)
        seen.busy = False
        if time.monotonic() >= deadline:
            return found


def _produce(producer: Producer, topic: str, values: list[bytes], partition: int) -> None:
    """Produce ``values`` to one partition and wait until all are acknowledged."""
    reports = _Reports()
    for value in values:
        producer.produce(
            topic, value, key=None, headers=(), partition=partition, on_delivery=reports
        )
    assert reports.flush(producer) == 0
    assert reports.errors == [None] * len(values)


def _positions(records: list[Envelope]) -> list[tuple[int, int]]:
    return [(record.partition.index, record.offset) for record in records]


# produce, then consume


def test_a_record_keeps_its_value_key_headers_and_produce_time(backend: Backend) -> None:
    """A consumed record carries the produced bytes, key, headers and the time of produce."""
    topic = backend.topic()
    every_byte = bytes(range(256))
    sent = [
        (b"first", b"k", (("x-a", b"1"), ("x-b", every_byte), ("x-a", b"2"))),
        (b"", None, ()),
        (every_byte, b"", (("x-empty", b""),)),
        (b"last", b"k", (("x-z", b"1"), ("content-type", b"2"), ("x-a", b""))),  # no name twice
    ]
    producer, reports = backend.producer(), _Reports()
    before_ms = time.time_ns() // 1_000_000
    for value, key, headers in sent:
        producer.produce(topic, value, key=key, headers=headers, partition=0, on_delivery=reports)
    assert reports.flush(producer) == 0
    after_ms = time.time_ns() // 1_000_000
    consumer, seen = _subscribed(backend, topic)
    got = _consume(consumer, seen, len(sent))
    assert [(record.value, record.key, record.headers) for record in got] == sent
    assert all(before_ms <= record.timestamp_ms <= after_ms for record in got)


def test_records_arrive_from_their_partition_in_produce_order(backend: Backend) -> None:
    """An explicit partition is honoured, and each partition's records come in produce order."""
    topic = backend.topic(partitions=3)
    producer, reports = backend.producer(), _Reports()
    sent = [(index % 2 * 2, f"m{index}".encode()) for index in range(12)]  # partitions 0, 2
    for partition, value in sent:
        producer.produce(
            topic, value, key=None, headers=(), partition=partition, on_delivery=reports
        )
    assert reports.flush(producer) == 0
    consumer, seen = _subscribed(backend, topic)
    got = _consume(consumer, seen, len(sent))
    for partition in (0, 2):
        mine = [record for record in got if record.partition == Partition(topic, partition)]
        assert [record.value for record in mine] == [v for p, v in sent if p == partition]
        assert [record.offset for record in mine] == list(range(6))
    assert len(got) == len(sent)


def test_records_without_a_partition_are_spread_by_key(backend: Backend) -> None:
    """With no partition given, one key always lands on one partition and keys spread out."""
    topic = backend.topic(partitions=4)
    producer, reports = backend.producer(), _Reports()
    keys = [b"same"] * 3 + [f"key-{index}".encode() for index in range(16)]
    for key in keys:
        producer.produce(topic, b"v", key=key, headers=(), partition=None, on_delivery=reports)
    assert reports.flush(producer) == 0
    consumer, seen = _subscribed(backend, topic)
    got = _consume(consumer, seen, len(keys))
    assert sorted(record.key or b"" for record in got) == sorted(keys)
    assert len({record.partition for record in got if record.key == b"same"}) == 1
    assert len({record.partition for record in got}) > 1


# delivery reports


def test_delivery_reports_come_inside_poll_with_none_on_success(backend: Backend) -> None:
    """``on_delivery`` is never called from ``produce``, only from ``poll``, with None."""
    topic = backend.topic()
    producer, reports = backend.producer(), _Reports()
    for value in (b"a", b"b", b"c"):
        producer.produce(topic, value, key=None, headers=(), partition=0, on_delivery=reports)
    assert reports.errors == []
    reports.poll_until(producer, 3)
    assert reports.errors == [None, None, None]
    assert all(reports.inside)


def test_flush_reports_every_delivery_and_returns_zero(backend: Backend) -> None:
    """``flush`` returns 0 once every record is acknowledged, each report made inside it."""
    topic = backend.topic(partitions=2)
    producer, reports = backend.producer(), _Reports()
    for index in range(20):
        producer.produce(
            topic, b"v", key=None, headers=(), partition=index % 2, on_delivery=reports
        )
    assert reports.flush(producer) == 0
    assert reports.errors == [None] * 20
    assert all(reports.inside)
    assert reports.flush(producer) == 0  # nothing left: flushing again is harmless


def test_flush_also_delivers_records_produced_by_delivery_reports(backend: Backend) -> None:
    """A record produced from inside ``on_delivery`` is delivered by the same ``flush``."""
    topic = backend.topic()
    producer, reports = backend.producer(), _Reports()

    def then_produce(error: str | None) -> None:
        reports(error)
        producer.produce(topic, b"second", key=None, headers=(), partition=0, on_delivery=reports)

    producer.produce(topic, b"first", key=None, headers=(), partition=0, on_delivery=then_produce)
    assert reports.flush(producer) == 0
    assert reports.errors == [None, None]
    assert all(reports.inside)


def test_a_refused_record_is_reported_as_an_error_by_flush(backend: Backend) -> None:
    """An oversized record or a missing partition gets an error report naming the cause."""
    topic = backend.topic()
    producer, reports = backend.producer(max_message_bytes=_MESSAGE_LIMIT), _Reports()
    producer.produce(
        topic, b"x" * (5 * _MESSAGE_LIMIT), key=None, headers=(), partition=0, on_delivery=reports
    )
    producer.produce(topic, b"v", key=None, headers=(), partition=7, on_delivery=reports)
    producer.produce(topic, b"v", key=None, headers=(), partition=0, on_delivery=reports)
    assert reports.flush(producer) == 0
    assert [error and error.split(":")[0] for error in reports.errors] == [
        "MSG_SIZE_TOO_LARGE",
        "_UNKNOWN_PARTITION",
        None,
    ]


def test_a_refusal_is_reported_inside_poll_or_flush_too(backend: Backend) -> None:
    """``on_delivery`` of a refused record runs inside ``flush``, not from ``produce``."""
    topic = backend.topic()
    producer, reports = backend.producer(max_message_bytes=_MESSAGE_LIMIT), _Reports()
    producer.produce(
        topic, b"x" * (5 * _MESSAGE_LIMIT), key=None, headers=(), partition=0, on_delivery=reports
    )
    producer.produce(topic, b"v", key=None, headers=(), partition=7, on_delivery=reports)
    from_produce = list(reports.errors)
    assert reports.flush(producer) == 0
    assert from_produce == []
    assert len(reports.errors) == 2
    assert all(reports.inside)


def test_partitions_for_counts_the_partitions_of_a_topic(backend: Backend) -> None:
    """``partitions_for`` gives a topic's partition count, and 0 for a topic that is missing."""
    producer = backend.producer()
    assert producer.partitions_for(backend.topic(partitions=3)) == 3
    assert producer.partitions_for(f"missing-{uuid.uuid4().hex[:12]}") == 0


# the consumer group


def test_subscribe_assigns_every_partition_inside_consume(backend: Backend) -> None:
    """``on_assign`` runs inside ``consume`` with the topic's partitions; ``assignment`` agrees."""
    topic = backend.topic(partitions=3)
    consumer, seen = _subscribed(backend, topic)
    assert seen.assigned == []  # not from subscribe
    _join(consumer, seen)
    every = [Partition(topic, index) for index in range(3)]
    assert seen.assigned == [every]
    assert seen.inside == [True]
    assert sorted(consumer.assignment()) == every


def test_a_new_consumer_resumes_after_the_committed_offset(backend: Backend) -> None:
    """After a synchronous commit, the group's next consumer starts at the committed offset."""
    topic = backend.topic()
    _produce(backend.producer(), topic, [f"m{index}".encode() for index in range(5)], 0)
    first, seen = _subscribed(backend, topic)
    assert len(_consume(first, seen, 5)) == 5
    first.commit({Partition(topic, 0): 3}, asynchronous=False)
    first.close()
    second, seen = _subscribed(backend, topic)
    got = _consume(second, seen, 2)
    assert [(record.offset, record.value) for record in got] == [(3, b"m3"), (4, b"m4")]
    assert _quiet(second, seen, backend) == []


def test_records_not_committed_are_delivered_again(backend: Backend) -> None:
    """What a consumer read but did not commit goes again to the group's next consumer."""
    topic = backend.topic(partitions=2)
    producer = backend.producer()
    _produce(producer, topic, [b"a0", b"a1"], 0)
    _produce(producer, topic, [b"b0", b"b1"], 1)
    first, seen = _subscribed(backend, topic)
    assert len(_consume(first, seen, 4)) == 4
    first.commit({Partition(topic, 0): 2}, asynchronous=False)  # partition 1: nothing
    first.close()
    second, seen = _subscribed(backend, topic)
    got = _consume(second, seen, 2)
    assert [(record.partition.index, record.value) for record in got] == [(1, b"b0"), (1, b"b1")]
    assert _quiet(second, seen, backend) == []


def test_a_paused_partition_delivers_nothing_until_resumed(backend: Backend) -> None:
    """``pause`` holds one partition back while others flow; ``resume`` delivers all it held."""
    topic = backend.topic(partitions=2)
    held, flowing = Partition(topic, 0), Partition(topic, 1)
    consumer, seen = _subscribed(backend, topic)
    _join(consumer, seen)
    consumer.pause([held])
    producer = backend.producer()
    _produce(producer, topic, [b"h0", b"h1", b"h2"], held.index)
    _produce(producer, topic, [b"f0", b"f1", b"f2"], flowing.index)
    got = _consume(consumer, seen, 3) + _quiet(consumer, seen, backend)
    assert _positions(got) == [(1, 0), (1, 1), (1, 2)]
    consumer.resume([held])
    got = _consume(consumer, seen, 3) + _quiet(consumer, seen, backend)
    assert [(record.offset, record.value) for record in got] == [(0, b"h0"), (1, b"h1"), (2, b"h2")]


def test_a_resumed_partition_delivers_again_at_once(backend: Backend) -> None:
    """Records reach a resumed partition's consumer within a fraction of a second, pause after
    pause (librdkafka's fetcher, left alone, notices a resume only at its next wake-up, up to
    a second later)."""
    topic = backend.topic()
    partition = Partition(topic, 0)
    consumer, seen = _subscribed(backend, topic)
    _join(consumer, seen)
    backlog = [b"r%d" % index for index in range(50)]
    _produce(backend.producer(), topic, backlog, partition.index)
    assert [record.value for record in _consume(consumer, seen, 2)] == backlog[:2]
    waits = []
    for expected in backlog[2:5]:
        consumer.pause([partition])  # with the rest of the backlog fetched, as back-pressure does
        assert consumer.consume(1, _POLL_S) == []
        consumer.resume([partition])
        resumed = time.monotonic()
        assert [record.value for record in _consume(consumer, seen, 1)] == [expected]
        waits.append(time.monotonic() - resumed)
    # ~0.01 s each with the fix, ~0.9 s without; the median rides out one stall on a busy machine
    assert sorted(waits)[1] < 0.5, f"seconds from resume to the next record: {waits}"


def test_lag_counts_the_records_behind_the_end_of_a_consumed_partition(backend: Backend) -> None:
    """``lag`` gives, per partition consumed from, how many records are left to its end."""
    topic = backend.topic(partitions=2)
    _produce(backend.producer(), topic, [f"m{index}".encode() for index in range(5)], 0)
    consumer, seen = _subscribed(backend, topic)
    assert len(_consume(consumer, seen, 2)) == 2
    assert consumer.lag() == {Partition(topic, 0): 3}  # nothing read from partition 1 yet
    assert len(_consume(consumer, seen, 3)) == 3
    assert consumer.lag() == {Partition(topic, 0): 0}


def test_close_revokes_the_partitions_and_hands_them_on(backend: Backend) -> None:
    """``close`` calls ``on_revoke`` with the assignment, and the group's next consumer gets it."""
    topic = backend.topic(partitions=2)
    every = [Partition(topic, 0), Partition(topic, 1)]
    first, seen = _subscribed(backend, topic)
    _join(first, seen)
    seen.busy = True
    first.close()
    seen.busy = False
    assert seen.revoked == [every]
    assert seen.inside == [True, True]
    second, seen = _subscribed(backend, topic)
    _join(second, seen)
    assert seen.assigned == [every]


def test_a_closed_consumer_refuses_every_call(backend: Backend) -> None:
    """After ``close``, every call but ``close`` raises ``RuntimeError``."""
    topic = backend.topic()
    consumer = backend.consumer()
    consumer.close()
    calls: list[Callable[[], object]] = [
        lambda: consumer.consume(1, 0),
        lambda: consumer.commit({Partition(topic, 0): 1}, asynchronous=False),
        lambda: consumer.pause([Partition(topic, 0)]),
        lambda: consumer.resume([Partition(topic, 0)]),
        consumer.assignment,
        consumer.lag,
        lambda: consumer.reachable(1.0),
    ]
    for call in calls:
        with pytest.raises(RuntimeError):
            call()
    consumer.close()  # closing again is harmless


def test_a_consumer_finds_the_broker_reachable(backend: Backend) -> None:
    """``reachable`` is None while the broker answers."""
    assert backend.consumer().reachable(timeout=10.0) is None
