"""Wiring a worker to Kafka from a deployment config, and running it until a signal."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import structlog

from pipelines import Pipeline
from pipelines.config import Settings
from stream.broker import EmbeddedBroker, resolve_bootstrap
from stream.commit import AckCommitter, Committer, TransactionalCommitter
from stream.health import Health, MetricsServer
from stream.kafka import KafkaConsumer, KafkaProducer, consumer_config, producer_config
from stream.ledger import Ledger
from stream.metrics import Metrics, PrometheusMetrics
from stream.topics import ensure_topics, topic_partitions
from stream.worker import Worker

__all__ = ["Connection", "connect_kafka", "create_topics", "run_worker"]

_log = structlog.get_logger("headrace.runtime")
# Headroom librdkafka adds to a message (headers, record framing) on top of its value.
_FRAMING_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the broker is, and the embedded broker this process started (if it did)."""

    bootstrap: str
    broker: EmbeddedBroker | None


@contextmanager
def connect_kafka(settings: Settings) -> Iterator[Connection]:
    """Resolve ``kafka.bootstrap_servers``; a broker started here stops on exit."""
    bootstrap, broker = resolve_bootstrap(settings.kafka.bootstrap_servers)
    if broker is not None:
        _log.info("embedded broker started", address=bootstrap, pid=broker.pid)
    try:
        yield Connection(bootstrap, broker)
    finally:
        if broker is not None:
            broker.stop()


def create_topics(settings: Settings, bootstrap: str) -> list[str]:
    """Create the input, output and dead-letter topics that are missing."""
    kafka = settings.kafka
    topic_config = {"max.message.bytes": str(kafka.max_message_bytes + _FRAMING_BYTES)}
    created = ensure_topics(
        bootstrap,
        dict.fromkeys(
            (kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic), kafka.partitions
        ),
        properties=kafka.librdkafka_properties(),
        config=topic_config,
    )
    return created


def build_worker(
    settings: Settings,
    pipeline: Pipeline,
    bootstrap: str,
    metrics: Metrics | None = None,
    health: Health | None = None,
) -> Worker:
    """A worker on real Kafka: group consumer, idempotent (or transactional) producer."""
    kafka = settings.kafka
    limit = kafka.max_message_bytes + _FRAMING_BYTES
    exactly_once = settings.processing.guarantee == "exactly_once"
    producer_overrides: dict[str, str | int | float | bool] = {"message.max.bytes": limit}
    consumer_overrides: dict[str, str | int | float | bool] = {}
    if exactly_once:
        producer_overrides["transactional.id"] = (
            f"headrace-{kafka.group_id}-{socket.gethostname()}-{os.getpid()}"
        )
        consumer_overrides["isolation.level"] = "read_committed"
    producer = KafkaProducer(producer_config(kafka, bootstrap, **producer_overrides))
    consumer = KafkaConsumer(consumer_config(kafka, bootstrap, **consumer_overrides))
    interval_s = settings.processing.commit_interval_ms / 1000

    def committer(ledger: Ledger) -> Committer:
        if exactly_once:
            return TransactionalCommitter(
                consumer, producer, ledger, interval_s=interval_s, clock=time.monotonic
            )
        return AckCommitter(consumer, ledger, interval_s)

    return Worker(
        pipeline,
        settings,
        consumer,
        producer,
        committer,
        max_request_bytes=kafka.max_message_bytes,
        metrics=metrics,
        health=health,
    )


def run_worker(settings: Settings, bootstrap: str) -> int:
    """Serve until SIGTERM/SIGINT, then drain, commit and return 0."""
    pipeline = Pipeline(settings)
    kafka = settings.kafka
    partitions = topic_partitions(
        bootstrap, kafka.input_topic, properties=kafka.librdkafka_properties()
    )
    if settings.replicas > partitions:
        _log.warning(
            "more replicas than input partitions; some will stay idle",
            replicas=settings.replicas,
            partitions=partitions,
            topic=kafka.input_topic,
        )
    with _metrics_server(settings, pipeline) as (metrics, health):
        worker = build_worker(settings, pipeline, bootstrap, metrics, health)
        _serve(worker, settings, pipeline, bootstrap)
    _log.info("worker stopped", pipeline=pipeline.name, pid=os.getpid())
    return 0


def _serve(worker: Worker, settings: Settings, pipeline: Pipeline, bootstrap: str) -> None:
    kafka = settings.kafka
    with _stop_on_signals(worker):
        _log.info(
            "worker started",
            pipeline=pipeline.name,
            version=pipeline.version,
            input=kafka.input_topic,
            output=kafka.output_topic,
            dead_letters=kafka.dead_letter_topic,
            group=kafka.group_id,
            bootstrap=bootstrap,
            pid=os.getpid(),
        )
        worker.run()
        worker.close()


@contextmanager
def _metrics_server(
    settings: Settings, pipeline: Pipeline
) -> Iterator[tuple[Metrics | None, Health]]:
    """Prometheus and the probes on ``metrics.port`` (nothing when it is 0)."""
    health = Health()
    port = settings.metrics.port
    if port == 0:
        yield None, health
        return
    metrics = PrometheusMetrics(pipeline.name)
    try:
        server = MetricsServer(port, metrics.registry, health).start()
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on port {port}: {exc.strerror or exc} "
            "(set metrics.port, or 0 to turn metrics off)"
        ) from exc
    _log.info("metrics and probes listening", port=port, paths="/metrics /healthz /readyz")
    try:
        yield metrics, health
    finally:
        server.stop()


@contextmanager
def _stop_on_signals(worker: Worker) -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        del frame
        _log.info("stopping: finishing in-flight requests", signal=signal.Signals(signum).name)
        worker.stop()

    def reload(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        _log.info("SIGHUP: reloading the config")
        worker.request_reload()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
