"""Wiring a worker to Kafka from a deployment config, and running it until a signal."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog

from pipelines import Pipeline
from pipelines.config import Settings
from stream.kafka.admin import topic_partitions
from stream.kafka.clients import KafkaConsumer, KafkaProducer
from stream.kafka.config import worker_consumer_config, worker_producer_config
from stream.ops.health import Health, MetricsServer
from stream.ops.metrics import Metrics, PrometheusMetrics
from stream.worker.commit import AckCommitter, Committer, TransactionalCommitter
from stream.worker.ledger import Ledger
from stream.worker.loop import Worker

__all__ = ["build_worker", "run_worker"]

_log = structlog.get_logger("headrace.runtime")


def build_worker(
    settings: Settings,
    pipeline: Pipeline,
    bootstrap: str,
    metrics: Metrics | None = None,
    health: Health | None = None,
) -> Worker:
    """A worker on real Kafka: group consumer, idempotent (or transactional) producer."""
    kafka = settings.kafka
    exactly_once = settings.processing.guarantee == "exactly_once"
    transactional_id = (
        f"headrace-{kafka.group_id}-{socket.gethostname()}-{os.getpid()}" if exactly_once else None
    )
    producer = KafkaProducer(
        worker_producer_config(settings, bootstrap, transactional_id=transactional_id)
    )
    consumer = KafkaConsumer(worker_consumer_config(settings, bootstrap))
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
