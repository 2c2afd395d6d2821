"""W3C Trace Context for requests, and the worker's optional OpenTelemetry spans (SPEC §3).

The ``traceparent`` rule: a request that carries a valid ``traceparent`` gets, on its result and
on its dead letter, a ``traceparent`` of the same trace and sampled flag with the worker's own
span id (:func:`child`); ``tracestate`` passes through unchanged. A ``traceparent`` that is not
valid W3C Trace Context is ignored: passed through as it came, never an error.

:class:`Spans` exports the worker's spans: one per traced request, a child of the request's
context whose span id is the one :func:`child` wrote into the headers, linked to one span per
micro-batch that holds its rows, step durations and outcome. :meth:`Spans.from_env` turns it on
only when the ``opentelemetry-sdk`` package is installed (the ``headrace[otel]`` extra) and the
environment asks for traces (:func:`exporter_names`); otherwise it is a no-op whose methods
return at once, and nothing from ``opentelemetry`` is imported.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import structlog

from pipelines.errors import PipelineError
from stream.headers import TRACEPARENT, TRACESTATE
from stream.types import Envelope, Headers

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "Attributes",
    "Spans",
    "TraceParent",
    "child",
    "exporter_names",
    "parse_traceparent",
    "with_child",
]

_log = structlog.get_logger("headrace.tracing")

Attributes = Mapping[str, str | int | float | bool]
_FIELDS = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_LENGTH = 55  # version 00: 2 + 1 + 32 + 1 + 16 + 1 + 2
_NO_TRACE = b"0" * 32
_NO_SPAN = b"0" * 16
_KEPT_FLAGS = 0x03  # sampled, and Trace Context level 2's random-trace-id
_getrandbits = random.getrandbits


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid ``traceparent``: trace id (128 bits), parent span id (64 bits) and flags."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 0x01)

    def header(self) -> bytes:
        """The value as version 00 writes it: ``00-<32 hex>-<16 hex>-<2 hex>``."""
        return b"00-%032x-%016x-%02x" % (self.trace_id, self.span_id, self.flags)


def _valid(value: bytes) -> bool:
    """W3C Trace Context: lower-case hex fields, no all-zero ids, version ``ff`` refused;
    version 00 is exactly 55 bytes, a later version may append ``-`` and fields of its own."""
    if len(value) != _LENGTH and (len(value) < _LENGTH or value[0:2] == b"00"):
        return False
    if len(value) > _LENGTH and value[_LENGTH : _LENGTH + 1] != b"-":
        return False
    return (
        _FIELDS.match(value) is not None
        and value[0:2] != b"ff"
        and value[3:35] != _NO_TRACE
        and value[36:52] != _NO_SPAN
    )


def parse_traceparent(value: bytes) -> TraceParent | None:
    """The ``traceparent`` header value's fields, or None when it is not valid."""
    if not _valid(value):
        return None
    return TraceParent(int(value[3:35], 16), int(value[36:52], 16), int(value[53:55], 16))


def child(traceparent: bytes) -> tuple[bytes, int] | None:
    """The worker's ``traceparent`` for a request that sent ``traceparent``, and its span id.

    Same trace id, a new random non-zero span id, the sampled (and random-trace-id) flags kept,
    written as version 00. None when the value is not valid: the request's header then passes
    through unchanged. Cheap: one regex match, one random draw, one bytes format.
    """
    if not _valid(traceparent):
        return None
    span_id = _getrandbits(64) or 1
    flags = int(traceparent[53:55], 16) & _KEPT_FLAGS
    return b"00-%b-%016x-%02x" % (traceparent[3:35], span_id, flags), span_id


def with_child(headers: Headers) -> tuple[Headers, int | None]:
    """``headers`` with a valid ``traceparent`` replaced by the worker's (:func:`child`), and
    the worker's span id; unchanged, and None, when there is no valid one."""
    for index, (key, value) in enumerate(headers):
        if key.lower() == TRACEPARENT:
            made = child(value)
            if made is None:
                return headers, None
            return (*headers[:index], (key, made[0]), *headers[index + 1 :]), made[1]
    return headers, None


def exporter_names(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The trace exporters the standard ``OTEL_*`` variables ask for; empty means tracing off.

    ``OTEL_SDK_DISABLED=true`` turns tracing off. ``OTEL_TRACES_EXPORTER`` lists exporters by
    name (``otlp``, ``console``, comma-separated; ``none`` for none). Without it, an OTLP
    endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) means
    ``otlp``. Unlike the OpenTelemetry SDK's own default, nothing set means no tracing: a worker
    pays for spans only when asked to.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    listed = environ.get("OTEL_TRACES_EXPORTER")
    if listed is not None:
        names = (name.strip().lower() for name in listed.split(","))
        return tuple(dict.fromkeys(name for name in names if name and name != "none"))
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return ("otlp",) if any(environ.get(key) for key in endpoints) else ()


class Spans:
    """The worker's spans. This base is tracing off: each method returns at once.

    Build one per worker with :meth:`from_env`. Times are epoch nanoseconds
    (``time.time_ns()``), not a monotonic clock, since they are exported as wall-clock times.
    """

    enabled: ClassVar[bool] = False

    @classmethod
    def from_env(cls, pipeline: str, environ: Mapping[str, str] | None = None) -> Spans:
        """Spans exported as the ``OTEL_*`` variables say, or the no-op when they ask for none,
        when ``opentelemetry-sdk`` is not installed, or when no exporter they name can be built
        (each logged as a warning: the worker serves on without traces)."""
        environ = os.environ if environ is None else environ
        names = exporter_names(environ)
        if not names:
            return cls()
        try:
            from stream.worker import _otel  # noqa: PLC0415 - only a traced worker loads the SDK
        except ImportError as exc:
            _log.warning(
                "tracing off: OTEL_* asks for traces but opentelemetry-sdk is not installed",
                install="headrace[otel]",
                error=str(exc),
            )
            return cls()
        exporters = _otel.exporters(names, environ)
        return _otel.OtelSpans(pipeline, exporters) if exporters else cls()

    @classmethod
    def exporting_to(cls, pipeline: str, exporter: SpanExporter, *, batched: bool = True) -> Spans:
        """Spans sent to ``exporter`` (e.g. the SDK's ``InMemorySpanExporter``); ``batched``
        exports from a background thread, else each span as it ends."""
        from stream.worker import _otel  # noqa: PLC0415 - only a traced worker loads the SDK

        return _otel.OtelSpans(pipeline, (exporter,), batched=batched)

    def batch_span(
        self,
        rows: int,
        steps: Mapping[str, float],
        outcome: str,
        *,
        start_ns: int,
        end_ns: int,
    ) -> object | None:
        """Export one micro-batch's span: its ``rows``, each step's duration in seconds and its
        ``outcome``. Returns the handle that :meth:`request_span` links its requests to (None
        when tracing is off)."""
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
        """Export one request's span, a child of the request's ``traceparent`` (with its
        ``tracestate``) whose own span id is ``span_id`` — the one :func:`child` wrote into the
        result's or dead letter's header — linked to its micro-batch's span. A dead letter
        passes ``error`` (its message) and ``error_type``: the span's status is then ERROR."""

    def consumed_span(
        self,
        envelope: Envelope,
        span_id: int,
        *,
        end_ns: int,
        batch: object | None = None,
        error: PipelineError | None = None,
        attributes: Attributes | None = None,
    ) -> None:
        """:meth:`request_span` of a consumed request: its ``traceparent`` and ``tracestate``
        read from ``envelope``, from its Kafka timestamp (queueing included) to ``end_ns``."""
        start_ns = min(end_ns, max(0, envelope.timestamp_ms) * 1_000_000) or end_ns
        self.request_span(
            envelope.header(TRACEPARENT),
            span_id,
            tracestate=envelope.header(TRACESTATE),
            start_ns=start_ns,
            end_ns=end_ns,
            batch=batch,
            error=None if error is None else error.message,
            error_type=None if error is None else error.error_type,
            attributes={"headrace.offset": envelope.offset, **(attributes or {})},
        )

    def close(self) -> None:
        """Export what is still buffered and stop; at the worker's exit."""
