"""The benchmark's own Kafka calls: fill a topic fast, follow a group's commits, read records back.

The embedded broker's high watermarks lag (they point at the last record *batch*), so progress
is read from the worker group's committed offsets; a drain is timed from the moment the group
becomes Stable to the last result's CreateTime (stamped by the worker's producer), read back
after the run so that the benchmark takes no CPU from the worker meanwhile.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupState,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.kafka.config import CONSUMER_DEFAULTS, PRODUCER_DEFAULTS
from stream.types import Headers

__all__ = [
    "PEER_CONSUMER",
    "PEER_PRODUCER",
    "Commits",
    "Drain",
    "Message",
    "Record",
    "create_topics",
    "delete_topics",
    "fill",
    "read_back",
    "wait_stable",
]

Message = tuple[bytes | None, bytes, Headers]  # key, value, headers

# The raw copy and the minimal loop use the worker's librdkafka defaults (stream.kafka.config),
# so that they differ from the worker in Python work only; the Quix Streams app keeps its own,
# as its users would.
PEER_CONSUMER: dict[str, str | int | float | bool] = dict(CONSUMER_DEFAULTS)
PEER_PRODUCER: dict[str, str | int | float | bool] = {
    **PRODUCER_DEFAULTS,
    "message.max.bytes": 2_000_000,
}


def fill(bootstrap: str, topic: str, messages: Iterable[Message], partitions: int) -> int:
    """Produce ``messages`` round-robin over the partitions, as fast as it goes; how many."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.max.bytes": 2_000_000,
        }
    )
    failed = 0

    def delivered(error: object, message: object) -> None:
        nonlocal failed
        del message
        failed += error is not None

    sent = 0
    for key, value, headers in messages:
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=sent % partitions,
                    headers=list(headers),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"could not fill '{topic}' on {bootstrap}: flush timed out")
    if failed:
        raise RuntimeError(f"{failed} of {sent} messages refused by '{topic}' on {bootstrap}")
    return sent


class Commits:
    """A consumer group's committed offsets on a topic, summed: requests done and committed."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
        self._partitions = [TopicPartition(topic, index) for index in range(partitions)]

    def total(self) -> int:
        found = self._consumer.committed(self._partitions, timeout=5)
        return sum(max(tp.offset, 0) for tp in found)

    def close(self) -> None:
        self._consumer.close()  # never subscribed: leaves the group's members alone


@dataclass(frozen=True, slots=True)
class Record:
    """A record read back: topic, CreateTime, request id header, key and value."""

    topic: str
    timestamp_ms: int
    request_id: bytes | None
    key: bytes | None = None
    value: bytes | None = None


def read_back(
    bootstrap: str, topics: Sequence[str], partitions: int, expected: int, idle: float = 3.0
) -> list[Record]:
    """The records of ``topics`` from offset 0: until ``expected`` or ``idle`` s without any."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "headrace-bench-reader",
            "fetch.wait.max.ms": 10,
            "enable.partition.eof": False,
        }
    )
    consumer.assign(
        [TopicPartition(t, i, OFFSET_BEGINNING) for t in topics for i in range(partitions)]
    )
    found: list[Record] = []
    last = time.monotonic()
    try:
        while len(found) < expected and time.monotonic() - last < idle:
            for message in consumer.consume(10_000, 0.2):
                if message.error() is None:
                    last = time.monotonic()
                    found.append(_record(message))
    finally:
        consumer.close()
    return found


def _record(message: Any) -> Record:
    request_id = None
    for name, value in message.headers() or ():
        if name == "x-request-id":
            request_id = value.encode() if isinstance(value, str) else bytes(value)
    return Record(
        str(message.topic()),
        int(message.timestamp()[1]),
        request_id,
        message.key(),
        message.value(),
    )


def create_topics(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create ``topics`` with ``partitions`` each (room for 2 MB records); wait until listed."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    config = {"max.message.bytes": "2000000"}
    new = [NewTopic(name, partitions, config=config) for name in topics]
    for future in admin.create_topics(new, request_timeout=15).values():
        future.result(timeout=20)
    deadline = time.monotonic() + 15
    while not set(topics) <= set(admin.list_topics(timeout=5).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {list(topics)} not listed 15 s after their creation")
        time.sleep(0.05)


def delete_topics(bootstrap: str, topics: Sequence[str]) -> None:
    """Delete ``topics`` (the embedded broker keeps every byte in memory until then)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    for future in admin.delete_topics(list(topics), operation_timeout=10).values():
        with contextlib.suppress(KafkaException):  # gone already: nothing to free
            future.result(timeout=15)


def wait_stable(bootstrap: str, group_id: str, timeout: float) -> float | None:
    """When (``time.time()``) the group became Stable, i.e. its members got their partitions.

    Polled every 10 ms; ``None`` if it did not within ``timeout`` s.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        future = admin.describe_consumer_groups([group_id], request_timeout=5)[group_id]
        try:
            stable = future.result().state == ConsumerGroupState.STABLE
        except KafkaException:
            stable = False
        if stable:
            return time.time()
        time.sleep(0.01)
    return None


@dataclass(frozen=True, slots=True)
class Drain:
    """How a pre-filled topic drained: from the group's assignment to the last result.

    ``started_at`` is when the consumer group became Stable (the worker got its partitions);
    the results' CreateTime, stamped by the worker's producer, gives the first and the last.
    """

    expected: int
    seen: int
    first_s: float  # assignment -> first result
    seconds: float  # assignment -> last result

    @classmethod
    def of(cls, records: Sequence[Record], expected: int, started_at: float) -> Drain:
        stamps = [record.timestamp_ms / 1000 for record in records]
        if not stamps:
            return cls(expected, 0, 0.0, 0.0)
        return cls(expected, len(stamps), min(stamps) - started_at, max(stamps) - started_at)

    @property
    def complete(self) -> bool:
        return self.seen >= self.expected

    @property
    def rate(self) -> float | None:
        return self.seen / self.seconds if self.seconds > 0 and self.seen else None
