"""The worker loop: consume, decode, micro-batch, serve, publish in order, commit.

``run`` is ``while running: run_once()``; each step of ``run_once`` is a named method, so
tests can drive the loop one iteration at a time against the real broker or the fakes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from pipelines import Pipeline
from pipelines.config import Settings, load_settings
from pipelines.errors import ConfigError, PipelineError
from stream.errors import TransactionAborted, WorkerError
from stream.kafka.protocols import Consumer, Producer
from stream.ops.health import Health
from stream.ops.metrics import Metrics, NullMetrics
from stream.types import DeadLetter, Outcome, Partition, Result
from stream.worker.batcher import Batch, Batcher
from stream.worker.commit import Committer
from stream.worker.decoding import Decoder
from stream.worker.intake import Guardrail, Intake
from stream.worker.ledger import Ledger
from stream.worker.publisher import Publisher
from stream.worker.serving import Server
from stream.worker.tracing import Spans

__all__ = ["Worker", "warm_up"]

_log = structlog.get_logger("headrace.worker")
_IDLE_POLL_S = 0.1
_OBSERVE_EVERY_S = 5.0
_BACKPRESSURE = "back-pressure"


class Worker:
    """Serves one pipeline from the input topic to the output and dead-letter topics."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings,
        consumer: Consumer,
        producer: Producer,
        committer: Callable[[Ledger], Committer],
        *,
        max_request_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        metrics: Metrics | None = None,
        health: Health | None = None,
        spans: Spans | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.running = True
        self._stop_at: float | None = None
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._metrics = metrics or NullMetrics()
        self._health = health or Health()
        self._spans = spans or Spans()
        self._ledger = Ledger()
        self._committer = committer(self._ledger)
        self._decoder = Decoder(pipeline, settings.processing, max_request_bytes, wall_clock_ms)
        self._batcher = Batcher(settings.batching.max_rows, settings.batching.max_wait_ms, clock)
        self._server = self._server_for(pipeline)
        self._intake = Intake(consumer)
        self._guardrail = Guardrail(
            settings.processing.max_consecutive_failures, self._intake, self._health
        )
        self._publisher = Publisher(
            producer,
            self._ledger,
            self._committer,
            settings.kafka,
            metrics=self._metrics,
            health=self._health,
            clock=clock,
            wall_clock_ms=wall_clock_ms,
            observe=self._guardrail.observe,
            spans=self._spans,
        )
        self._max_request_bytes = max_request_bytes
        self._reload_requested = False
        self._observed_at = -_OBSERVE_EVERY_S
        self._rows_per_message = 1.0  # recent averages, to size each consume to the caps
        self._bytes_per_message = 1.0
        self._assigned: set[Partition] = set()
        consumer.subscribe([settings.kafka.input_topic], self.on_assign, self.on_revoke)

    def run(self) -> None:
        """Serve until ``stop()``; then finish in-flight work, flush and commit."""
        try:
            while self.running:
                self.run_once()
        finally:
            self.shutdown()

    def stop(self) -> None:
        """Ask the loop to stop after this iteration (safe from a signal handler).

        What was consumed is still served, for up to half of
        ``processing.shutdown_timeout_s``; a batch still running then (a hanging step) is
        abandoned, its requests left uncommitted to be served again after a restart.
        """
        self.running = False
        if self._stop_at is None:
            self._stop_at = self._clock() + self.settings.processing.shutdown_timeout_s / 2

    def _should_stop(self) -> bool:
        """Whether a running batch must give up now: the shutdown grace period is over."""
        return self._stop_at is not None and self._clock() >= self._stop_at

    def request_reload(self) -> None:
        """Re-read the config before the next iteration (safe from a signal handler)."""
        self._reload_requested = True

    def close(self) -> None:
        """Leave the consumer group; call after ``run`` returned."""
        self._consumer.close()

    def run_once(self) -> None:
        """One iteration: consume, serve due batches, publish, back-pressure, commit."""
        if self._reload_requested:
            self._reload()
        self._consume()
        self._serve(self._batcher.due())
        self._publisher.publish()
        self._apply_backpressure()
        self._commit(self._clock())
        self._observe(self._clock())
        if self._publisher.failure is not None:
            raise self._publisher.failure

    def shutdown(self) -> None:
        """Serve what was consumed, publish it, wait for acknowledgements and commit."""
        self.finish(None)
        self._metrics.inflight(0)

    def finish(self, partitions: list[Partition] | None) -> None:
        """Serve, publish and commit everything consumed (all, or before revoking)."""
        self._serve(self._batcher.drain())
        self._publisher.publish()
        remaining = self._publisher.flush(self.settings.processing.shutdown_timeout_s)
        if remaining:
            _log.warning(
                "results not acknowledged in time; they will be served again",
                unacknowledged=remaining,
            )
        try:
            self._committer.commit_now(partitions)
        except TransactionAborted as exc:
            _log.warning("transaction aborted while finishing", error=str(exc))

    # Rebalance callbacks, called by the consumer inside consume(). They get the partitions
    # that move: under the eager protocol (range, roundrobin) the whole assignment each time;
    # under the cooperative one (cooperative-sticky) only those that change hands, while the
    # others are kept, with their in-flight requests, ledger and commits untouched.
    def on_assign(self, partitions: list[Partition]) -> None:
        self._assigned.update(partitions)
        self._health.partitions = len(self._assigned)
        _log.info(
            "partitions assigned",
            partitions=[str(p) for p in partitions],
            assigned=len(self._assigned),
        )

    def on_revoke(self, partitions: list[Partition]) -> None:
        self._assigned.difference_update(partitions)
        self._health.partitions = len(self._assigned)  # nothing new is read from them
        _log.info(
            "partitions revoked; finishing them",
            partitions=[str(p) for p in partitions],
            kept=len(self._assigned),
        )
        self.finish(partitions)
        self._ledger.forget(partitions)
        self._publisher.forget(partitions)
        self._intake.revoked(partitions)

    def _consume(self) -> None:
        timeout = self._batcher.max_wait_s if self._batcher.rows else _IDLE_POLL_S
        if self._intake.holding(_BACKPRESSURE):
            # The paused partitions give nothing: wait for the acknowledgements that lift the
            # hold (the producer's poll returns with the first), not on the consumer.
            self._publisher.poll(timeout)
            timeout = 0.0
        envelopes = self._consumer.consume(self._room(), timeout)
        rows_before = self._ledger.pending_rows
        decoder, ledger, batcher = self._decoder, self._ledger, self._batcher
        for envelope in envelopes:
            decoded = decoder(envelope)
            if isinstance(decoded, DeadLetter):
                ledger.reserve(envelope, 0)
                ledger.resolve(decoded)
                continue
            ledger.reserve(envelope, decoded.rows)
            full = batcher.add(decoded)
            if full:
                self._serve(full)
        if envelopes:
            rows = max(1, self._ledger.pending_rows - rows_before)
            self._rows_per_message = rows / len(envelopes)
            self._bytes_per_message = sum(len(e.value) for e in envelopes) / len(envelopes)

    def _room(self) -> int:
        """How many messages to take now: what the in-flight caps leave room for (>= 1)."""
        batching = self.settings.batching
        free_rows = batching.max_inflight_rows - self._ledger.pending_rows
        free_bytes = batching.max_inflight_bytes - self._ledger.pending_bytes
        room = min(
            free_rows / max(1.0, self._rows_per_message),
            free_bytes / max(1.0, self._bytes_per_message),
        )
        return max(1, min(batching.max_rows, int(room)))

    def _serve(self, batches: Sequence[Batch]) -> None:
        for batch in batches:
            started = time.perf_counter()
            began_ns = time.time_ns() if self._spans.enabled else 0
            served = self._server.serve(batch.requests)
            # a request left unserved (stopping) stays uncommitted
            outcomes = [o for o in served if o is not None]
            self._ledger.resolve_all(outcomes)
            self._log_batch(batch, outcomes, time.perf_counter() - started)
            if self._spans.enabled:
                self._trace(batch, served, began_ns)
            self._publisher.publish()  # results leave as soon as their batch is served

    def _trace(self, batch: Batch, served: Sequence[Outcome | None], began_ns: int) -> None:
        """The batch's span, and a span for each traced request it served (a dead letter's
        span comes with the dead letter: see the publisher)."""
        ended_ns = time.time_ns()
        dead = sum(isinstance(outcome, DeadLetter) for outcome in served)
        unserved = sum(outcome is None for outcome in served)
        link = self._spans.batch_span(
            batch.rows,
            self._server.step_seconds,
            f"served {len(served) - dead - unserved}, dead-lettered {dead}, unserved {unserved}",
            start_ns=began_ns,
            end_ns=ended_ns,
        )
        for request, outcome in zip(batch.requests, served, strict=True):
            if request.trace is None or not isinstance(outcome, Result):
                continue
            self._spans.consumed_span(
                request.envelope,
                request.trace[1],
                end_ns=ended_ns,
                batch=link,
                attributes={"headrace.rows": request.rows},
            )

    def _server_for(self, pipeline: Pipeline) -> Server:
        """A server whose long batches keep /healthz beating and give up past the grace."""
        return Server(
            pipeline, self._metrics, should_stop=self._should_stop, keep_alive=self._health.beat
        )

    def _reload(self) -> None:
        """Swap in the pipeline of the re-read config once in-flight batches are served.

        The new pipeline is loaded and validated beside the running one; a config that does
        not load is refused and the running pipeline keeps serving. Changes to ``kafka``,
        ``metrics`` and ``replicas`` need a restart and are not applied.
        """
        self._reload_requested = False
        self._observed_at = -_OBSERVE_EVERY_S
        source = self.settings.source
        try:
            if source is None:
                raise ConfigError("the running settings were not loaded from a file")
            settings = load_settings(source)
            pipeline = Pipeline(settings)
        except (PipelineError, OSError) as exc:
            _log.error(
                "reload refused; the running pipeline keeps serving",
                error=str(exc),
                version=self.pipeline.version,
            )
            return
        kept = {
            "kafka": self.settings.kafka,
            "metrics": self.settings.metrics,
            "replicas": self.settings.replicas,
        }
        ignored = [key for key, value in kept.items() if getattr(settings, key) != value]
        if ignored:
            _log.warning(
                "reload: these sections need a restart and were not applied", sections=ignored
            )
        warm_up(pipeline)  # before it takes over (SPEC §6)
        self._serve(self._batcher.drain())
        self._publisher.publish()
        old_version = self.pipeline.version
        self.settings = settings.model_copy(update=kept)
        self.pipeline = pipeline
        self._decoder = Decoder(
            pipeline, self.settings.processing, self._max_request_bytes, self._wall_clock_ms
        )
        self._server = self._server_for(pipeline)
        batching = self.settings.batching
        self._batcher = Batcher(batching.max_rows, batching.max_wait_ms, self._clock)
        self._guardrail.reset(self.settings.processing.max_consecutive_failures)
        _log.info(
            "pipeline reloaded",
            old_version=old_version,
            version=pipeline.version,
            steps=pipeline.step_names,
        )

    def _apply_backpressure(self) -> None:
        """Pause at the in-flight caps (request and outcome bytes alike), resume under half."""
        batching = self.settings.batching
        rows, size = self._ledger.pending_rows, self._ledger.pending_bytes
        if rows >= batching.max_inflight_rows or size >= batching.max_inflight_bytes:
            if self._intake.hold(_BACKPRESSURE):
                _log.info("in-flight limit reached; partitions paused", rows=rows, bytes=size)
        elif rows < batching.max_inflight_rows // 2 and size < batching.max_inflight_bytes // 2:
            self._intake.release(_BACKPRESSURE)
        self._intake.enforce()  # partitions assigned while paused (the guardrail too)

    def _commit(self, now: float) -> None:
        try:
            self._committer.maybe_commit(now)
        except TransactionAborted as exc:
            raise WorkerError(
                f"transaction aborted: {exc}; restart to resume from the last committed offsets"
            ) from exc

    def _observe(self, now: float) -> None:
        """Heartbeat every iteration; lag every few seconds (from what the consumer knows).

        Whether the broker answers is not asked here but by a thread of its own on a
        connection of its own (:class:`~stream.ops.health.BrokerWatch`): the loop may be the
        one waiting on that broker.
        """
        self._health.beat()
        self._metrics.inflight(self._ledger.pending_rows)
        if now - self._observed_at < _OBSERVE_EVERY_S:
            return
        self._observed_at = now
        for partition, messages in self._consumer.lag().items():
            self._metrics.lag(partition.index, messages)

    def _log_batch(self, batch: Batch, outcomes: list[Outcome], seconds: float) -> None:
        dead = sum(isinstance(outcome, DeadLetter) for outcome in outcomes)
        self._metrics.batch(batch.rows, seconds)
        _log.info(
            "batch served",
            rows=batch.rows,
            messages=len(batch.requests),
            ms=round(seconds * 1000, 2),
            dead_letters=dead,
        )


def warm_up(pipeline: Pipeline) -> None:
    """Run each model of ``pipeline`` once on a dummy batch, logging how long it took (a
    model that fails on the dummy batch is logged and served anyway)."""
    started = time.perf_counter()
    for failure in pipeline.warm_up():
        _log.warning("model warm-up failed; the model is served anyway", error=failure)
    _log.info(
        "models warmed up",
        pipeline=pipeline.name,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
