"""Worker metrics (SPEC §9) behind a small protocol; Prometheus is one implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "NullMetrics", "PrometheusMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROW_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics(Protocol):
    """What the worker reports; every method is cheap and never raises."""

    def batch(self, rows: int, seconds: float) -> None: ...

    def steps(self, names: Sequence[str], nanoseconds: Sequence[int]) -> None: ...

    def served(self, rows: int, request_timestamp_ms: int, now_ms: int) -> None: ...

    def dead_lettered(self, error_type: str) -> None: ...

    def inflight(self, rows: int) -> None: ...

    def lag(self, partition: int, messages: int) -> None: ...


class NullMetrics:
    """Metrics switched off (``metrics.port: 0``) or not wanted (tests)."""

    def batch(self, rows: int, seconds: float) -> None:
        return None

    def steps(self, names: Sequence[str], nanoseconds: Sequence[int]) -> None:
        return None

    def served(self, rows: int, request_timestamp_ms: int, now_ms: int) -> None:
        return None

    def dead_lettered(self, error_type: str) -> None:
        return None

    def inflight(self, rows: int) -> None:
        return None

    def lag(self, partition: int, messages: int) -> None:
        return None


class PrometheusMetrics:
    """The SPEC §9 metrics in a registry of their own, labelled with the pipeline name."""

    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.pipeline = pipeline
        r = self.registry
        self._requests = Counter(
            "headrace_requests", "Requests answered, by outcome.", _by("outcome"), registry=r
        )
        self._rows = Counter("headrace_rows", "Rows served.", _by(), registry=r)
        self._dead_letters = Counter(
            "headrace_dead_letters", "Dead letters, by error type.", _by("error_type"), registry=r
        )
        self._batch_rows = Histogram(
            "headrace_batch_rows", "Rows per micro-batch.", _by(), buckets=_ROW_BUCKETS, registry=r
        )
        self._step_seconds = Histogram(
            "headrace_step_seconds",
            "Time per step per micro-batch.",
            _by("step"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._latency = Histogram(
            "headrace_request_latency_seconds",
            "From the request's timestamp to its result being acknowledged.",
            _by(),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._inflight = Gauge(
            "headrace_inflight_rows", "Rows consumed and not yet acknowledged.", _by(), registry=r
        )
        self._lag = Gauge(
            "headrace_consumer_lag",
            "Messages behind the end of each input partition.",
            _by("partition"),
            registry=r,
        )
        self._served = self._requests.labels(pipeline, "served")
        self._dead = self._requests.labels(pipeline, "dead_lettered")
        self._rows_child = self._rows.labels(pipeline)
        self._latency_child = self._latency.labels(pipeline)
        self._inflight.labels(pipeline).set(0)

    def batch(self, rows: int, seconds: float) -> None:
        del seconds
        self._batch_rows.labels(self.pipeline).observe(rows)

    def steps(self, names: Sequence[str], nanoseconds: Sequence[int]) -> None:
        for name, elapsed in zip(names, nanoseconds, strict=False):
            self._step_seconds.labels(self.pipeline, name).observe(elapsed / 1e9)

    def served(self, rows: int, request_timestamp_ms: int, now_ms: int) -> None:
        self._served.inc()
        self._rows_child.inc(rows)
        if request_timestamp_ms > 0:
            self._latency_child.observe(max(0, now_ms - request_timestamp_ms) / 1000)

    def dead_lettered(self, error_type: str) -> None:
        self._dead.inc()
        self._dead_letters.labels(self.pipeline, error_type).inc()

    def inflight(self, rows: int) -> None:
        self._inflight.labels(self.pipeline).set(rows)

    def lag(self, partition: int, messages: int) -> None:
        self._lag.labels(self.pipeline, str(partition)).set(messages)


def _by(*labels: str) -> list[str]:
    """A metric's label names: the pipeline's, then ``labels``."""
    return ["pipeline", *labels]
