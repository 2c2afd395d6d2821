"""What ``dlq replay`` and ``dlq show`` share: the error types, reading the dead-letter topic.

Reading stops at the end offsets seen in the first fetch (the fetch's high watermark: Tansu's
ListOffsets answer is wrong, see docs/tansu.md), or after ``_IDLE_S`` without records.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

from pipelines.config import KafkaSettings
from stream import headers
from stream.errors import DlqError, KafkaClientError, TopicError
from stream.kafka.admin import topic_partitions
from stream.kafka.broker import EMBEDDED, EMBEDDED_ADDRESS
from stream.kafka.config import dlq_consumer_config
from stream.kafka.readers import PartitionReader
from stream.types import Envelope, Partition

__all__ = [
    "TIMEOUT_S",
    "broker_address",
    "error_type_of",
    "failed_at",
    "open_reader",
    "partition_count",
    "read_letters",
    "text_of",
]

TIMEOUT_S = 10.0  # each broker round trip (metadata, offsets, commit)
_IDLE_S = 2.0  # stop reading when nothing came for this long


def failed_at(letter: Envelope) -> datetime:
    """When the request failed: ``x-failed-at``, else the dead letter's record timestamp."""
    text = letter.header_text("x-failed-at")
    if text:
        try:
            when = datetime.fromisoformat(text)
            return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(letter.timestamp_ms / 1000, tz=UTC)


def error_type_of(letter: Envelope) -> str:
    """The dead letter's ``x-error-type``, or ``unknown``."""
    return letter.header_text(headers.ERROR_TYPE) or "unknown"


def text_of(key: bytes | None) -> str:
    """Bytes for a table or a message: ``-`` for none, undecodable bytes escaped."""
    return "-" if key is None else key.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- reading


def broker_address(kafka: KafkaSettings) -> str:
    """The broker address; ``embedded`` is the running embedded broker (never started here:
    a fresh one holds no dead letters)."""
    given = kafka.bootstrap_servers.strip()
    return EMBEDDED_ADDRESS if given.lower() == EMBEDDED else given


def partition_count(kafka: KafkaSettings, bootstrap: str, key: str, timeout: float) -> int:
    """Partitions of the topic at ``kafka.<key>``; a missing topic is an error naming it."""
    topic = getattr(kafka, key)
    try:
        return topic_partitions(
            bootstrap, topic, properties=kafka.librdkafka_properties(), timeout=timeout
        )
    except TopicError:
        raise DlqError(
            f"topic {topic!r} (kafka.{key}) does not exist on {bootstrap}; "
            "check the config, or create it with `headrace topics CONFIG`"
        ) from None


def open_reader(kafka: KafkaSettings, bootstrap: str, group: str) -> PartitionReader:
    """A reader whose offsets are those of ``group``; it never commits by itself."""
    return PartitionReader(dlq_consumer_config(kafka, bootstrap, group))


def read_letters(
    reader: PartitionReader, topic: str, starts: dict[int, int], timeout: float
) -> Iterator[list[Envelope]]:
    """Batches of dead letters from ``starts`` up to the end offsets of the first fetch; or
    until nothing came for ``_IDLE_S`` (``timeout`` before every partition's first fetch)."""
    reader.assign({Partition(topic, index): offset for index, offset in starts.items()})
    ends: dict[int, int] = {}
    position = dict(starts)
    last = time.monotonic()
    while not _reached(reader, topic, position, ends):
        if time.monotonic() - last > (_IDLE_S if len(ends) == len(position) else timeout):
            return
        try:
            batch = reader.consume(500, 0.1)
        except KafkaClientError as exc:  # the topic is gone or unreadable
            raise DlqError(str(exc)) from exc
        for letter in batch:
            position[letter.partition.index] = letter.offset + 1
        if batch:
            last = time.monotonic()
            yield batch


def _reached(
    reader: PartitionReader, topic: str, position: dict[int, int], ends: dict[int, int]
) -> bool:
    unknown = [Partition(topic, index) for index in position.keys() - ends.keys()]
    ends.update((p.index, end) for p, end in reader.fetched_ends(unknown).items())
    return len(ends) == len(position) and all(position[i] >= ends[i] for i in position)
