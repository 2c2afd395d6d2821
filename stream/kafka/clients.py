"""The worker's view of Kafka: two small protocols and their confluent-kafka implementation.

The librdkafka configs they are built from come from :mod:`stream.kafka.config`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.types import Envelope, Headers, Partition

__all__ = [
    "Consumer",
    "DeliveryCallback",
    "KafkaConsumer",
    "KafkaProducer",
    "Producer",
    "RebalanceCallback",
    "envelope_of",
]

DeliveryCallback = Callable[[str | None], None]  # the error text, or None when acknowledged
RebalanceCallback = Callable[[list[Partition]], None]


class Consumer(Protocol):
    """What the worker needs of a group consumer; rebalance callbacks run inside consume."""

    def subscribe(
        self, topics: Sequence[str], on_assign: RebalanceCallback, on_revoke: RebalanceCallback
    ) -> None: ...

    def consume(self, max_messages: int, timeout: float) -> list[Envelope]: ...

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None: ...

    def pause(self, partitions: Sequence[Partition]) -> None: ...

    def resume(self, partitions: Sequence[Partition]) -> None: ...

    def assignment(self) -> list[Partition]: ...

    def lag(self) -> dict[Partition, int]:
        """Messages between the position and the end of each assigned partition, where known."""
        ...

    def reachable(self, timeout: float) -> str | None:
        """None when the broker answers a metadata request in time, else why not."""
        ...

    def close(self) -> None: ...


class Producer(Protocol):
    """What the worker needs of a producer; ``on_delivery`` runs inside ``poll``/``flush``."""

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Headers,
        partition: int | None,
        on_delivery: DeliveryCallback,
    ) -> None: ...

    def poll(self, timeout: float) -> None: ...

    def flush(self, timeout: float) -> int: ...

    def partitions_for(self, topic: str) -> int: ...


class KafkaConsumer:
    """A confluent-kafka consumer speaking in :class:`Envelope` and :class:`Partition`."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._consumer = confluent_kafka.Consumer(dict(config))
        self._on_assign: RebalanceCallback = _ignore
        self._on_revoke: RebalanceCallback = _ignore

    def subscribe(
        self, topics: Sequence[str], on_assign: RebalanceCallback, on_revoke: RebalanceCallback
    ) -> None:
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def consume(self, max_messages: int, timeout: float) -> list[Envelope]:
        # A batch consume waits its whole timeout unless max_messages arrive: wait for the
        # first message only, then take what is already fetched without waiting.
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        rest = (
            self._consumer.consume(num_messages=max_messages - 1, timeout=0)
            if max_messages > 1
            else []
        )
        envelopes = []
        for message in [first, *rest]:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise KafkaException(error)
                continue  # transient: librdkafka retries by itself
            envelopes.append(envelope_of(message))
        return envelopes

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        if not offsets:
            return
        if asynchronous:
            self._consumer.commit(offsets=_topic_partitions(offsets), asynchronous=True)
        else:
            self._consumer.commit(offsets=_topic_partitions(offsets), asynchronous=False)

    def pause(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.pause(_topic_partitions({p: -1 for p in partitions}))

    def resume(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.resume(_topic_partitions({p: -1 for p in partitions}))

    def assignment(self) -> list[Partition]:
        return [Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def lag(self) -> dict[Partition, int]:
        assigned = self._consumer.assignment()
        found = {}
        for position in self._consumer.position(assigned):
            # cached: the fetch's high watermark (Tansu's ListOffsets answer is wrong)
            _, high = self._consumer.get_watermark_offsets(position, cached=True)
            if high >= 0 and position.offset >= 0:
                found[Partition(position.topic, position.partition)] = max(
                    0, high - position.offset
                )
        return found

    def reachable(self, timeout: float) -> str | None:
        try:
            self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            return str(exc.args[0].str() if exc.args else exc)
        return None

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def committed(self, partitions: Sequence[Partition], timeout: float) -> dict[Partition, int]:
        found = self._consumer.committed(_topic_partitions({p: -1 for p in partitions}), timeout)
        return {Partition(tp.topic, tp.partition): tp.offset for tp in found}

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(TopicPartition(partition.topic, partition.index, offset))

    def close(self) -> None:
        self._consumer.close()

    def _assigned(self, consumer: object, partitions: list[TopicPartition]) -> None:
        del consumer
        self._on_assign([Partition(tp.topic, tp.partition) for tp in partitions])

    def _revoked(self, consumer: object, partitions: list[TopicPartition]) -> None:
        del consumer
        self._on_revoke([Partition(tp.topic, tp.partition) for tp in partitions])


class KafkaProducer:
    """A confluent-kafka producer; blocks politely when its local queue is full."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._producer = confluent_kafka.Producer(dict(config))
        self._partitions: dict[str, int] = {}

    @property
    def transactional(self) -> confluent_kafka.Producer:
        """The underlying producer, for the transaction calls of exactly-once mode."""
        return self._producer

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Headers,
        partition: int | None,
        on_delivery: DeliveryCallback,
    ) -> None:
        delivered = functools.partial(_report, on_delivery)
        target = _ANY_PARTITION if partition is None else partition
        while True:
            try:
                self._producer.produce(
                    topic, value, key, target, on_delivery=delivered, headers=list(headers)
                )
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                # refused before it left the process (e.g. MSG_SIZE_TOO_LARGE): same path
                # as a refusal by the broker
                error = exc.args[0]
                on_delivery(f"{error.name()}: {error.str()}")
                return

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return int(self._producer.flush(timeout))

    def partitions_for(self, topic: str) -> int:
        if topic not in self._partitions:
            # all topics: asking for one by name makes some brokers create it
            metadata = self._producer.list_topics(timeout=10)
            found = metadata.topics.get(topic)
            count = len(found.partitions) if found is not None and found.error is None else 0
            if count == 0:
                return 0
            self._partitions[topic] = count
        return self._partitions[topic]


def envelope_of(message: confluent_kafka.Message) -> Envelope:
    """A consumed message as an :class:`Envelope` (the message had no error)."""
    topic, index, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and index is not None and offset is not None
    raw = message.headers()
    headers: Headers = ()
    if raw:
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = tuple(
            (name, value.encode() if isinstance(value, str) else (value or b""))
            for name, value in pairs
        )
    return Envelope(
        partition=_partition(topic, index),
        offset=offset,
        key=message.key(),
        value=message.value() or b"",
        headers=headers,
        timestamp_ms=message.timestamp()[1],
    )


@functools.lru_cache(maxsize=4096)
def _partition(topic: str, index: int) -> Partition:
    return Partition(topic, index)


def _ignore(partitions: list[Partition]) -> None:
    del partitions


_ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks (by key)


def _report(on_delivery: DeliveryCallback, error: KafkaError | None, message: object) -> None:
    del message
    on_delivery(None if error is None else f"{error.name()}: {error.str()}")


def _topic_partitions(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.index, offset) for p, offset in offsets.items()]
