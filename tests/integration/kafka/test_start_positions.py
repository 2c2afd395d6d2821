"""Where a group's consumer starts a partition the group never committed, on the real broker.

librdkafka resolves ``auto.offset.reset`` for such a partition only after a fixed 100 ms wait;
:class:`~stream.kafka.clients.KafkaConsumer` looks up the committed offsets itself as the
partitions are assigned and assigns the start position the setting names, so a new worker's
first records come within a round trip or two of its assignment.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

import pytest

from pipelines.config import KafkaSettings
from stream.kafka.clients import KafkaConsumer, KafkaProducer
from stream.kafka.config import consumer_config, producer_config
from stream.types import Envelope, Partition
from tests.integration.support import Topics

pytestmark = pytest.mark.integration

_DEADLINE_S = 20.0
_ROUNDS = 3


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(producer_config(KafkaSettings(), bootstrap))
    failed: list[str | None] = []
    for value in values:
        producer.produce(topic, value, key=None, headers=(), partition=0, on_delivery=failed.append)
    assert producer.flush(_DEADLINE_S) == 0
    assert failed == [None] * len(values)


class _Started:
    """A consumer of a group of its own, and when its partitions were assigned."""

    def __init__(self, bootstrap: str, topic: str, **properties: str) -> None:
        settings = KafkaSettings(group_id=f"start-{uuid.uuid4().hex[:12]}")
        self.consumer = KafkaConsumer(consumer_config(settings, bootstrap, **properties))
        self.assigned_at: float | None = None
        self.consumer.subscribe([topic], self._assigned, lambda partitions: None)

    def _assigned(self, partitions: list[Partition]) -> None:
        del partitions
        self.assigned_at = time.monotonic()

    def first(self) -> tuple[Envelope, float]:
        """The first record, and the seconds from the assignment to it."""
        deadline = time.monotonic() + _DEADLINE_S
        while time.monotonic() < deadline:
            found = self.consumer.consume(1, 0.005)
            if found:
                assert self.assigned_at is not None
                return found[0], time.monotonic() - self.assigned_at
        raise AssertionError("no record before the deadline")


def test_a_new_group_reads_a_backlog_from_its_start_at_once(
    new_topics: Callable[..., Topics], bootstrap: str
) -> None:
    """With nothing committed and ``auto.offset.reset: earliest`` (the worker's default), the
    first record is offset 0, and it comes well within librdkafka's 100 ms reset wait."""
    topic = new_topics().input
    _produce(bootstrap, topic, [b"m0", b"m1", b"m2"])
    groups = [_Started(bootstrap, topic) for _ in range(_ROUNDS)]  # they join side by side
    try:
        waits = []
        for group in groups:
            record, waited = group.first()
            assert (record.offset, record.value) == (0, b"m0")
            waits.append(waited)
    finally:
        for group in groups:
            group.consumer.close()
    # ~0.001 s each with the committed-offset lookup, ~0.11 s without; the median rides out one
    # stall on a busy machine
    assert statistics.median(waits) < 0.07, f"seconds from assignment to first record: {waits}"


def test_auto_offset_reset_latest_skips_the_backlog(
    new_topics: Callable[..., Topics], bootstrap: str
) -> None:
    """With ``auto.offset.reset: latest`` a new group reads only what comes after it joined."""
    topic = new_topics().input
    for value in (b"old0", b"old1"):  # a batch each: Tansu's "latest" is wrong after a larger
        _produce(bootstrap, topic, [value])  # one (docs/tansu.md)
    group = _Started(bootstrap, topic, **{"auto.offset.reset": "latest"})
    try:
        deadline = time.monotonic() + _DEADLINE_S
        while group.assigned_at is None and time.monotonic() < deadline:
            assert group.consumer.consume(1, 0.1) == []
        assert group.assigned_at is not None, "no assignment before the deadline"
        time.sleep(0.3)  # the start position is resolved before anything new is produced
        _produce(bootstrap, topic, [b"new"])
        record, _ = group.first()
        assert (record.offset, record.value) == (2, b"new")
    finally:
        group.consumer.close()
