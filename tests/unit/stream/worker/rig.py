"""A worker wired to the fakes, stepped one ``run_once()`` at a time on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import Pipeline
from pipelines.config import Settings, load_settings
from stream.kafka.fakes import FakeBroker, FakeClock, FakeConsumer, FakeProducer, RecordingMetrics
from stream.ops.health import Health
from stream.types import Envelope, Headers, Partition
from stream.worker.commit import AckCommitter, Committer
from stream.worker.ledger import Ledger
from stream.worker.loop import Worker
from stream.worker.tracing import Spans
from tests.unit.stream.support import CCFRAUD, header

WAIT = 0.005  # batching.max_wait_ms of the tests
INTERVAL = 0.2  # processing.commit_interval_ms of the tests


@dataclass
class Rig:
    """A worker wired to a fake broker, the way ``runtime.build_worker`` wires it to Kafka."""

    settings: Settings
    clock: FakeClock
    broker: FakeBroker
    consumer: FakeConsumer
    producer: FakeProducer
    metrics: RecordingMetrics
    health: Health
    worker: Worker

    def send(
        self, value: bytes, *, partition: int = 0, headers: Headers = (), key: bytes = b"k"
    ) -> Envelope:
        """Append a request to the input topic."""
        return self.broker.append(
            self.settings.kafka.input_topic,
            value,
            key=key,
            headers=headers,
            partition=partition,
            timestamp_ms=self.clock.wall_ms(),
        )

    def step(self, seconds: float = 0.0) -> None:
        """Let ``seconds`` pass, then run one iteration of the loop."""
        self.clock.advance(seconds)
        self.worker.run_once()

    def results(self, partition: int | None = None) -> list[Envelope]:
        return self.broker.messages(self.settings.kafka.output_topic, partition)

    def dead_letters(self) -> list[Envelope]:
        return self.broker.messages(self.settings.kafka.dead_letter_topic)

    def committed(self) -> dict[int, int]:
        """The group's committed offsets by input partition number."""
        committed = self.broker.committed(self.settings.kafka.group_id)
        return {partition.index: offset for partition, offset in committed.items()}

    def input(self, index: int) -> Partition:
        return Partition(self.settings.kafka.input_topic, index)


def make_rig(
    pipeline: Pipeline,
    *,
    config: Path = CCFRAUD,
    input_partitions: int = 2,
    output_partitions: int = 2,
    max_message_bytes: int | None = None,
    processing: dict[str, Any] | None = None,
    spans: Spans | None = None,
    **batching: Any,
) -> Rig:
    """A worker serving ``pipeline`` with the settings of ``config``, adjusted for the tests."""
    base = load_settings(config)
    kafka: dict[str, Any] = {}
    if max_message_bytes is not None:
        kafka["max_message_bytes"] = max_message_bytes
    settings = base.model_copy(
        update={
            "batching": base.batching.model_copy(update={"max_wait_ms": 5, **batching}),
            "processing": base.processing.model_copy(
                update={"commit_interval_ms": 200, **(processing or {})}
            ),
            "kafka": base.kafka.model_copy(update=kafka),
        }
    )
    clock, broker, metrics, health = FakeClock(), FakeBroker(), RecordingMetrics(), Health()
    broker.create_topic(settings.kafka.input_topic, input_partitions)
    broker.create_topic(settings.kafka.output_topic, output_partitions)
    broker.create_topic(settings.kafka.dead_letter_topic, 1)
    consumer = FakeConsumer(broker, settings.kafka.group_id)
    producer = FakeProducer(broker, wall_clock_ms=clock.wall_ms)
    interval_s = settings.processing.commit_interval_ms / 1000

    def committer(ledger: Ledger) -> Committer:
        return AckCommitter(consumer, ledger, interval_s)

    worker = Worker(
        pipeline,
        settings,
        consumer,
        producer,
        committer,
        max_request_bytes=settings.kafka.max_message_bytes,
        clock=clock,
        wall_clock_ms=clock.wall_ms,
        metrics=metrics,
        health=health,
        spans=spans,
    )
    return Rig(settings, clock, broker, consumer, producer, metrics, health, worker)


def offsets(messages: list[Envelope]) -> list[int]:
    """The ``x-source-offset`` of each published record."""
    return [int(header(m.headers, "x-source-offset") or -1) for m in messages]
