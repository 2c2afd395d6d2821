"""The worker: consume, decode, micro-batch, serve, publish in order, commit.

- :mod:`~stream.worker.loop`: ``Worker``, the loop (``while running: run_once()``);
- :mod:`~stream.worker.decoding`, :mod:`~stream.worker.batcher`, :mod:`~stream.worker.serving`:
  the stages a request goes through; :mod:`~stream.worker.publisher` produces the outcomes
  (:mod:`~stream.worker.delivery`: what is retried, what fits); :mod:`~stream.worker.intake`
  pauses the partitions for back-pressure and the guardrail;
- :mod:`~stream.worker.deadlines` and :mod:`~stream.worker.tracing`: whether a request is still
  wanted (``x-deadline``, ``processing.max_request_age_ms``), and its W3C trace context with the
  optional OpenTelemetry spans (``headrace[otel]``);
- :mod:`~stream.worker.ledger` and :mod:`~stream.worker.commit`: offsets, in order, committed
  only after acknowledgement (or in a transaction);
- :mod:`~stream.worker.runtime`: a worker wired to Kafka from a config, until a signal;
  :mod:`~stream.worker.replicas`, :mod:`~stream.worker.processes` and
  :mod:`~stream.worker.reload` run, spawn and signal worker processes.

It talks to Kafka only through the protocols of :mod:`stream.kafka`, and imports
``pipelines``, :mod:`stream.ops`, ``stream.types``, ``stream.headers`` and ``stream.errors``.
"""

from stream.worker.loop import Worker
from stream.worker.runtime import build_worker, run_worker

__all__ = ["Worker", "build_worker", "run_worker"]
