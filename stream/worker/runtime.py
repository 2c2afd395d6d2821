"""Wiring a worker to Kafka from a deployment config, and running it until a signal.

Under exactly_once each worker slot has a stable ``transactional.id`` (:func:`transactional_id`):
a worker that starts in the slot of one that died fences it, and the broker aborts the
transaction it left open at once, instead of after ``transaction.timeout.ms``. With
``kafka.instance_id`` the slot is also the consumer's static group membership
(``group.instance.id``, replica ``i`` appending ``-i``), so a restarted worker takes its
partitions back without a rebalance of the others.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

import structlog

from pipelines import Pipeline
from pipelines.config import Settings
from stream.kafka.admin import topic_partitions
from stream.kafka.clients import BrokerProbe, KafkaConsumer, KafkaProducer
from stream.kafka.config import (
    group_instance_id,
    probe_config,
    transaction_timeout_ms,
    worker_consumer_config,
    worker_producer_config,
)
from stream.ops.health import BrokerWatch, Health, MetricsServer
from stream.ops.metrics import Metrics, PrometheusMetrics
from stream.worker.commit import AckCommitter, Committer, TransactionalCommitter
from stream.worker.ledger import Ledger
from stream.worker.loop import Worker, warm_up
from stream.worker.tracing import Spans

__all__ = ["REPLICA_INDEX", "build_worker", "run_worker", "transactional_id"]

_log = structlog.get_logger("headrace.runtime")

# The environment variable naming a worker's slot in its group: replica ``i`` of ``replicas: N``
# gets ``i``; two ``headrace run`` of one group on one host set it apart (or kafka.instance_id).
REPLICA_INDEX = "HEADRACE_REPLICA_INDEX"


def _never() -> bool:
    return False


def build_worker(
    settings: Settings,
    pipeline: Pipeline,
    bootstrap: str,
    metrics: Metrics | None = None,
    health: Health | None = None,
    *,
    stopping: Callable[[], bool] = _never,
    environ: Mapping[str, str] = os.environ,
    spans: Spans | None = None,
) -> Worker:
    """A worker on real Kafka: group consumer, idempotent (or transactional) producer.

    ``stopping()`` turns true once the worker is asked to stop: from then on its producer does
    not wait for room in a full queue (a broker that does not answer must not hold up SIGTERM).
    ``environ`` gives the replica index (``HEADRACE_REPLICA_INDEX``) of its slot.
    """
    kafka = settings.kafka
    health = health or Health()
    exactly_once = settings.processing.guarantee == "exactly_once"
    transactional = transactional_id(settings, environ) if exactly_once else None
    producer = KafkaProducer(
        worker_producer_config(settings, bootstrap, transactional_id=transactional),
        stopping=stopping,
    )
    most = pipeline.max_serve_seconds(settings.batching.max_rows)
    consumer_config = worker_consumer_config(
        settings, bootstrap, max_serve_s=most, replica=environ.get(REPLICA_INDEX)
    )
    consumer = KafkaConsumer(consumer_config, on_error=_kafka_error)
    if "group.instance.id" in consumer_config:
        _log.info("static group membership", group_instance_id=consumer_config["group.instance.id"])
    interval_s = settings.processing.commit_interval_ms / 1000
    if transactional is not None:
        _log.info("exactly_once: transactional producer", transactional_id=transactional)

    def committer(ledger: Ledger) -> Committer:
        if exactly_once:
            return TransactionalCommitter(
                producer,
                consumer.group_metadata,
                ledger,
                interval_s=interval_s,
                clock=time.monotonic,
                health=health,
                timeout_s=transaction_timeout_ms(settings) / 1000,
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
        spans=spans,
    )


def transactional_id(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The stable ``transactional.id`` of this worker's slot: ``headrace-<group>-<slot>``.

    The slot is ``kafka.instance_id`` when the settings have one, else this host's name and
    the replica index (``HEADRACE_REPLICA_INDEX``; 0 for a plain ``headrace run``), so that a
    worker restarted in its place takes the id over. Two workers must never share a slot: the
    younger fences the older, which then stops with an error naming the id.
    """
    index = environ.get(REPLICA_INDEX)
    slot = group_instance_id(settings.kafka, index) or f"{socket.gethostname()}-{index or 0}"
    return f"headrace-{settings.kafka.group_id}-{slot}"


def _kafka_error(text: str) -> None:
    _log.warning("kafka client error", error=text)


def run_worker(settings: Settings, bootstrap: str) -> int:
    """Serve until SIGTERM/SIGINT, then drain, commit and return 0."""
    pipeline = Pipeline(settings)
    warm_up(pipeline)  # before the group join: the first request pays no first-run cost
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
    stopping = threading.Event()
    spans = Spans.from_env(pipeline.name)  # the no-op unless OTEL_* asks for traces
    with _metrics_server(settings, pipeline) as (metrics, health):
        worker = build_worker(
            settings,
            pipeline,
            bootstrap,
            metrics,
            health,
            stopping=stopping.is_set,
            spans=spans,
        )
        settle_garbage_collector()
        try:
            _serve(worker, settings, pipeline, bootstrap, stopping=stopping, health=health)
        finally:
            spans.close()
    _log.info("worker stopped", pipeline=pipeline.name, pid=os.getpid())
    return 0


# Objects the collector's youngest generation collects at (allocations less frees of objects
# it tracks). Python's default (700) ran a collection every few dozen requests, a quarter of a J
# worker's CPU (measured: 0.51 s of 1.96 s for 40,000 requests). The requests in flight keep
# ~10 such objects each until their results are acknowledged, so a bound near their number
# still collects all the time to free nothing: measured on a J backlog, 10,000 took 0.12 s of
# ~2 s per 100,000 requests (6%), 20,000 0.05 s, 50,000 none. Cyclic garbage still adds up to
# a collection.
_GC_YOUNGEST = 50_000


def settle_garbage_collector() -> None:
    """Leave what start-up built (modules, the pipeline, its models) out of every collection
    (``gc.freeze``), and collect the young generation less often. Reference cycles are still
    collected; the worker's per-request objects are freed by reference counting."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNGEST, middle, oldest)


def _serve(
    worker: Worker,
    settings: Settings,
    pipeline: Pipeline,
    bootstrap: str,
    *,
    stopping: threading.Event,
    health: Health,
) -> None:
    kafka = settings.kafka
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_signals(worker, stopping))
        watch = None
        if settings.metrics.port:  # /readyz is served: it tells whether the broker answers
            probe = BrokerProbe(probe_config(kafka, bootstrap), kafka.input_topic)
            watch = stack.enter_context(BrokerWatch(probe, health, address=bootstrap))
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
        if watch is not None:
            watch.stop()
        worker.close()


@contextlib.contextmanager
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


@contextlib.contextmanager
def _stop_on_signals(worker: Worker, stopping: threading.Event) -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        del frame
        _log.info("stopping: finishing in-flight requests", signal=signal.Signals(signum).name)
        stopping.set()
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
