"""Operations: Prometheus metrics, the health probes and their HTTP server, and logging.

- :mod:`~stream.ops.metrics`: the ``Metrics`` protocol, a null sink and the Prometheus one;
- :mod:`~stream.ops.health`: ``/healthz`` and ``/readyz`` state, the server for them, and the
  thread that watches the broker for ``/readyz``;
- :mod:`~stream.ops.logs`: structlog, configured once per process.

It imports nothing else of ``stream``.
"""

from stream.ops.health import BrokerWatch, Health, MetricsServer
from stream.ops.logs import configure_logging
from stream.ops.metrics import Metrics, NullMetrics, PrometheusMetrics

__all__ = [
    "BrokerWatch",
    "Health",
    "Metrics",
    "MetricsServer",
    "NullMetrics",
    "PrometheusMetrics",
    "configure_logging",
]
