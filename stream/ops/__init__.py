"""Operations: Prometheus metrics, the health probes and their HTTP server, and logging.

- :mod:`~stream.ops.metrics`: the ``Metrics`` protocol, a null sink and the Prometheus one;
- :mod:`~stream.ops.health`: ``/healthz`` and ``/readyz`` state and the server for them;
- :mod:`~stream.ops.logs`: structlog, configured once per process.

It imports nothing else of ``stream``.
"""

from stream.ops.health import Health, MetricsServer
from stream.ops.logs import configure_logging
from stream.ops.metrics import Metrics, NullMetrics, PrometheusMetrics

__all__ = [
    "Health",
    "Metrics",
    "MetricsServer",
    "NullMetrics",
    "PrometheusMetrics",
    "configure_logging",
]
