"""The OpenTelemetry side of :mod:`stream.worker.tracing`: imported only by a traced worker.

The request span's id must equal the span id already written into the result's
``traceparent``, so the tracer provider draws span ids from :class:`_PinnedIds`: the id pinned
just before a request span starts, or a random one for every other span.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points

import structlog
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from stream.worker.tracing import Attributes, Spans, parse_traceparent

__all__ = ["OtelSpans", "exporters"]

_log = structlog.get_logger("headrace.tracing")
_GROUP = "opentelemetry_traces_exporter"  # the entry points the SDK's exporters register under
_SERVICE = "headrace"  # service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say


def exporters(names: Sequence[str], environ: Mapping[str, str]) -> tuple[SpanExporter, ...]:
    """The exporters ``names`` (from ``OTEL_TRACES_EXPORTER``) stand for, by the entry points
    that exporter packages register; one that is missing or fails is logged and left out.

    ``otlp`` means OTLP over ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or
    ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc`` (``opentelemetry-exporter-otlp-proto-grpc``) or
    ``http/protobuf``, the default (``opentelemetry-exporter-otlp-proto-http``). Each exporter
    reads its own ``OTEL_EXPORTER_*`` settings.
    """
    built = []
    for name in names:
        key = _entry_point(name, environ)
        found = entry_points(group=_GROUP, name=key)
        if not found:
            package = f"opentelemetry-exporter-{key.replace('_', '-')}"
            _log.warning("trace exporter not installed", exporter=name, install=package)
            continue
        try:
            built.append(next(iter(found)).load()())
        except Exception as exc:  # a broken exporter package costs the traces, not the worker
            _log.warning("trace exporter failed to start", exporter=name, error=str(exc))
    return tuple(built)


def _entry_point(name: str, environ: Mapping[str, str]) -> str:
    if name != "otlp":
        return name
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return "otlp_proto_grpc" if protocol.strip().lower() == "grpc" else "otlp_proto_http"


class _PinnedIds(IdGenerator):
    """Random ids, except the span id pinned for the next span started on this thread."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self._pinned = threading.local()

    def pin(self, span_id: int) -> None:
        """``span_id`` for the next span this thread starts; 0 unpins."""
        self._pinned.span_id = span_id

    def generate_span_id(self) -> int:
        pinned: int = getattr(self._pinned, "span_id", 0)
        if pinned:
            self._pinned.span_id = 0
            return pinned
        return self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True


class OtelSpans(Spans):
    """Spans exported through an OpenTelemetry SDK tracer provider of the worker's own.

    The provider is not made the global one: python steps that use OpenTelemetry keep theirs.
    Its resource, sampler (``OTEL_TRACES_SAMPLER``, by default parent-based always-on) and batch
    processor (``OTEL_BSP_*``) follow the standard variables.
    """

    enabled = True

    def __init__(
        self, pipeline: str, exporters: Sequence[SpanExporter], *, batched: bool = True
    ) -> None:
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": _SERVICE}))
        self._ids = _PinnedIds()
        self._provider = TracerProvider(resource=resource, id_generator=self._ids)
        for exporter in exporters:
            processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
            self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("headrace")
        self._pipeline = pipeline
        self._failed = False

    def batch_span(
        self,
        rows: int,
        steps: Mapping[str, float],
        outcome: str,
        *,
        start_ns: int,
        end_ns: int,
    ) -> object | None:
        try:
            return self._batch(rows, steps, outcome, start_ns, end_ns)
        except Exception as exc:  # tracing never fails a request
            self._dropped(exc)
            return None

    def request_span(
        self,
        traceparent: bytes | None,
        span_id: int,
        *,
        tracestate: bytes | None,
        start_ns: int,
        end_ns: int,
        batch: object | None = None,
        error: str | None = None,
        error_type: str | None = None,
        attributes: Attributes | None = None,
    ) -> None:
        own: dict[str, str | int | float | bool] = {"headrace.pipeline": self._pipeline}
        if attributes:
            own.update(attributes)
        if error_type is not None:
            own["headrace.error_type"] = error_type
        links = (Link(batch),) if isinstance(batch, SpanContext) else ()
        try:
            context = _parent(traceparent, tracestate)
            self._ids.pin(span_id)
            try:
                span = self._tracer.start_span(
                    "headrace.request",
                    context,
                    kind=SpanKind.CONSUMER,
                    attributes=own,
                    links=links,
                    start_time=start_ns,
                )
            finally:
                self._ids.pin(0)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end(end_time=end_ns)
        except Exception as exc:  # tracing never fails a request
            self._dropped(exc)

    def close(self) -> None:
        self._provider.shutdown()

    def _dropped(self, exc: Exception) -> None:
        """Log the first span that could not be made; the worker serves on."""
        if not self._failed:
            self._failed = True
            _log.warning("span not exported", error=f"{type(exc).__name__}: {exc}")

    def _batch(
        self, rows: int, steps: Mapping[str, float], outcome: str, start_ns: int, end_ns: int
    ) -> object:
        attributes: dict[str, str | int | float] = {
            "headrace.pipeline": self._pipeline,
            "headrace.batch.rows": rows,
            "headrace.outcome": outcome,
        }
        for step, seconds in steps.items():
            attributes[f"headrace.step.{step}.seconds"] = seconds
        span = self._tracer.start_span(
            "headrace.batch", Context(), attributes=attributes, start_time=start_ns
        )
        span.end(end_time=end_ns)
        return span.get_span_context()


def _parent(traceparent: bytes | None, tracestate: bytes | None) -> Context:
    """The request's remote span context as a parent, or an empty context (a root span)."""
    parent = parse_traceparent(traceparent) if traceparent is not None else None
    if parent is None:
        return Context()
    state = TraceState.from_header([tracestate.decode("latin-1")]) if tracestate else None
    remote = SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.flags),
        trace_state=state,
    )
    return set_span_in_context(NonRecordingSpan(remote), Context())
