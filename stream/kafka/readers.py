"""A consumer assigned partitions by hand, at offsets of the caller's choosing.

The client SDK's reply listener reads the output and dead-letter topics from their end; the
dead-letter commands read the dead-letter topic from a group's committed offsets or from a
point in time. Neither joins a consumer group: a group id only names whose offsets are read
and committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.errors import KafkaClientError
from stream.kafka.clients import KafkaConsumer, reason_of
from stream.types import Partition

__all__ = ["PartitionReader"]


class PartitionReader(KafkaConsumer):
    """A :class:`~stream.kafka.clients.KafkaConsumer` that is assigned partitions by hand.

    Reading stops with a KafkaClientError when a topic is gone or not readable (unknown
    topic or partition, not authorised), not only on a fatal error: nothing assigned by hand
    comes back by itself.
    """

    _UNREADABLE = frozenset(
        {
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        }
    )

    def assign(self, offsets: Mapping[Partition, int]) -> None:
        """Read ``offsets`` (partition -> the next offset to read) and nothing else."""
        self._consumer.assign(
            [TopicPartition(p.topic, p.index, offset) for p, offset in offsets.items()]
        )

    def topics(self, timeout: float) -> dict[str, int]:
        """Every topic on the cluster with its partition count (0 for one the broker reports
        in error). All of them: asking for one by name makes some brokers create it."""
        try:
            metadata = self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise KafkaClientError(reason_of(exc)) from exc
        return {
            name: 0 if topic.error is not None else len(topic.partitions)
            for name, topic in metadata.topics.items()
        }

    def watermarks(self, partition: Partition, timeout: float) -> tuple[int, int]:
        """The first offset of ``partition`` and its end (the next offset to be written),
        asked of the broker."""
        try:
            found = self._consumer.get_watermark_offsets(
                TopicPartition(partition.topic, partition.index), timeout=timeout
            )
        except KafkaException as exc:
            raise KafkaClientError(f"offsets of {partition}: {reason_of(exc)}") from exc
        if found is None:
            raise KafkaClientError(f"offsets of {partition}: no answer within {timeout:g} s")
        low, high = found
        return int(low), int(high)

    def fetched_ends(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The end offsets the latest fetches saw (the fetch's high watermark), for those of
        ``partitions`` fetched at least once; no broker round trip."""
        ends = {}
        for partition in partitions:
            found = self._consumer.get_watermark_offsets(
                TopicPartition(partition.topic, partition.index), cached=True
            )
            if found is not None and found[1] >= 0:
                ends[partition] = int(found[1])
        return ends

    def offsets_for_times(
        self, partitions: Sequence[Partition], timestamp_ms: int, timeout: float
    ) -> dict[Partition, int]:
        """The first offset at or after ``timestamp_ms`` of each of ``partitions``; those with
        no record that recent are left out."""
        wanted = [TopicPartition(p.topic, p.index, timestamp_ms) for p in partitions]
        try:
            found = self._consumer.offsets_for_times(wanted, timeout=timeout)
        except KafkaException as exc:
            raise KafkaClientError(reason_of(exc)) from exc
        return {Partition(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
