"""W3C Trace Context and the worker's OpenTelemetry spans (SPEC §3)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from stream.worker.tracing import Spans, TraceParent, child, exporter_names, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE}-{PARENT}-01".encode()
NOT_SAMPLED = f"00-{TRACE}-{PARENT}-00".encode()


def test_a_valid_traceparent_parses_to_its_fields() -> None:
    """Version 00 gives trace id, parent span id and flags; written back it is the same bytes."""
    parsed = parse_traceparent(SAMPLED)
    assert parsed == TraceParent(int(TRACE, 16), int(PARENT, 16), 1)
    assert parsed.sampled
    assert parsed.header() == SAMPLED


def test_a_later_version_with_more_fields_is_read_by_its_first_four() -> None:
    """A future version may append fields after a dash; the four known ones still count."""
    parsed = parse_traceparent(f"01-{TRACE}-{PARENT}-01-whatever".encode())
    assert parsed == TraceParent(int(TRACE, 16), int(PARENT, 16), 1)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-abc-01",
        f"00-{TRACE.upper()}-{PARENT}-01".encode(),  # upper-case hex
        f"00-{'0' * 32}-{PARENT}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero span id
        f"ff-{TRACE}-{PARENT}-01".encode(),  # the forbidden version
        f"00-{TRACE}-{PARENT}-01-extra".encode(),  # version 00 has exactly four fields
        f"01-{TRACE}-{PARENT}-01x".encode(),  # a later version's extra fields follow a dash
        f"00-{TRACE}-{PARENT}-0g".encode(),
        f"00_{TRACE}_{PARENT}_01".encode(),
        f" 00-{TRACE}-{PARENT}-01".encode(),
    ],
)
def test_an_invalid_traceparent_is_ignored(value: bytes) -> None:
    """A value that is not W3C Trace Context parses to None and gets no child: it is passed
    through unchanged, never an error."""
    assert parse_traceparent(value) is None
    assert child(value) is None


@pytest.mark.parametrize("parent", [SAMPLED, NOT_SAMPLED])
def test_the_child_keeps_the_trace_and_the_sampled_flag_with_a_new_span(parent: bytes) -> None:
    """The worker's traceparent has the request's trace id and flags and its own span id,
    the one it returns."""
    made = child(parent)
    assert made is not None
    header, span_id = made
    parsed = parse_traceparent(header)
    assert parsed is not None
    assert f"{parsed.trace_id:032x}" == TRACE
    assert parsed.flags == int(parent[-2:], 16)
    assert parsed.span_id == span_id != int(PARENT, 16)
    assert header == f"00-{TRACE}-{span_id:016x}-{parent[-2:].decode()}".encode()


def test_each_child_has_its_own_span_id() -> None:
    """Two requests of one trace get two span ids."""
    ids = {made[1] for made in (child(SAMPLED) for _ in range(50)) if made is not None}
    assert len(ids) == 50


def test_a_later_version_s_child_is_written_as_version_00() -> None:
    """The worker writes the version it knows; flags it does not know are cleared."""
    made = child(f"02-{TRACE}-{PARENT}-ff-future".encode())
    assert made is not None
    assert made[0] == f"00-{TRACE}-{made[1]:016x}-03".encode()


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "fraud"}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console,otlp"}, ("otlp", "console")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "True"}, ()),
    ],
)
def test_the_otel_variables_decide_whether_spans_are_exported(
    environ: dict[str, str], names: tuple[str, ...]
) -> None:
    """Tracing is on only when OTEL_TRACES_EXPORTER names an exporter or an OTLP endpoint is
    set, and OTEL_SDK_DISABLED is not true."""
    assert exporter_names(environ) == names


def test_without_otel_variables_the_worker_gets_the_no_op() -> None:
    """No OTEL_* variables: the spans object is the no-op, and its methods do nothing."""
    spans = Spans.from_env("ccfraud", {})
    assert type(spans) is Spans and not spans.enabled
    assert spans.batch_span(3, {"m": 0.1}, "served", start_ns=1, end_ns=2) is None
    spans.request_span(SAMPLED, 5, tracestate=None, start_ns=1, end_ns=2)
    spans.close()


def test_an_exporter_that_is_not_installed_leaves_tracing_off() -> None:
    """An exporter name no installed package provides is logged, and the worker runs untraced."""
    spans = Spans.from_env("ccfraud", {"OTEL_TRACES_EXPORTER": "no-such-exporter"})
    assert not spans.enabled


def test_a_named_exporter_turns_tracing_on() -> None:
    """OTEL_TRACES_EXPORTER=console builds an exporting spans object."""
    spans = Spans.from_env("ccfraud", {"OTEL_TRACES_EXPORTER": "console"})
    try:
        assert spans.enabled
    finally:
        spans.close()


_LIGHT = """
import os, sys
for key in [k for k in os.environ if k.startswith("OTEL_")]:
    del os.environ[key]
from stream.worker.tracing import Spans, child
spans = Spans.from_env("ccfraud")
made = child(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
link = spans.batch_span(1, {"m": 0.1}, "served", start_ns=1, end_ns=2)
spans.request_span(made[0], made[1], tracestate=None, start_ns=1, end_ns=2, batch=link)
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
"""


def test_an_untraced_worker_never_imports_opentelemetry() -> None:
    """Without OTEL_* variables, tracing and the traceparent rule load nothing of OpenTelemetry."""
    done = subprocess.run(
        [sys.executable, "-c", _LIGHT], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"


def test_tracing_asked_for_without_the_sdk_leaves_tracing_off() -> None:
    """OTEL_* set but opentelemetry-sdk missing: a warning, and the no-op spans."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from stream.worker.tracing import Spans\n"
        "print('enabled:', Spans.from_env('p', {'OTEL_TRACES_EXPORTER': 'console'}).enabled)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "enabled: False"
    assert "headrace[otel]" in done.stdout + done.stderr


# --- exported spans -------------------------------------------------------------------------


def _serve(spans: Spans, parent: bytes, error: str | None = None) -> tuple[int, object | None]:
    """A one-request micro-batch, traced as the worker does: its span id and the batch link."""
    made = child(parent)
    assert made is not None
    link = spans.batch_span(
        7, {"deserialize": 0.001, "ccfraud": 0.004}, "served", start_ns=1_000, end_ns=6_000
    )
    spans.request_span(
        parent,
        made[1],
        tracestate=b"vendor=opaque,other=1",
        start_ns=500,
        end_ns=7_000,
        batch=link,
        error=error,
        error_type=None if error is None else "schema_error",
        attributes={"messaging.kafka.offset": 42},
    )
    return made[1], link


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [span for span in exporter.get_finished_spans() if span.name == name]
    return span


def test_the_request_span_is_a_child_of_the_request_with_the_header_s_span_id(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """The exported span continues the request's trace, its parent is the request's span, and
    its own id is the one written into the result's traceparent."""
    spans, exporter = exported
    span_id, _ = _serve(spans, SAMPLED)
    span = _named(exporter, "headrace.request")
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.context.span_id == span_id
    assert span.parent.span_id == int(PARENT, 16) and span.parent.is_remote
    assert span.kind is SpanKind.CONSUMER
    assert (span.start_time, span.end_time) == (500, 7_000)
    assert span.context.trace_state.to_header() == "vendor=opaque,other=1"
    assert span.attributes is not None and span.attributes["messaging.kafka.offset"] == 42
    assert span.status.status_code is StatusCode.UNSET


def test_the_batch_span_carries_rows_step_durations_and_outcome(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """The micro-batch's span holds its rows, each step's seconds and the outcome."""
    spans, exporter = exported
    _serve(spans, SAMPLED)
    batch = _named(exporter, "headrace.batch")
    assert dict(batch.attributes or {}) == {
        "headrace.pipeline": "ccfraud",
        "headrace.batch.rows": 7,
        "headrace.outcome": "served",
        "headrace.step.deserialize.seconds": 0.001,
        "headrace.step.ccfraud.seconds": 0.004,
    }
    assert (batch.start_time, batch.end_time) == (1_000, 6_000)


def test_the_request_span_links_to_its_micro_batch(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """A request's span links to the span of the micro-batch that served it."""
    spans, exporter = exported
    _, link = _serve(spans, SAMPLED)
    batch = _named(exporter, "headrace.batch")
    request = _named(exporter, "headrace.request")
    assert batch.context is not None
    assert [linked.context for linked in request.links] == [batch.context] == [link]
    assert batch.context.trace_id != request.context.trace_id  # type: ignore[union-attr]


def test_a_dead_letter_s_span_has_an_error_status_with_the_message(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """A request that ended as a dead letter exports an ERROR span carrying its message."""
    spans, exporter = exported
    _serve(spans, SAMPLED, error="column 'tensor': expected list<float32>, got string")
    span = _named(exporter, "headrace.request")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "column 'tensor': expected list<float32>, got string"
    assert span.attributes is not None and span.attributes["headrace.error_type"] == "schema_error"


def test_a_request_not_sampled_upstream_exports_no_span(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """With the default parent-based sampler, an unsampled request's span is not exported."""
    spans, exporter = exported
    _serve(spans, NOT_SAMPLED)
    assert [span.name for span in exporter.get_finished_spans()] == ["headrace.batch"]


def test_other_spans_get_random_ids_after_a_request_span(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """The pinned span id serves one request span only: the next spans draw their own."""
    spans, exporter = exported
    first, _ = _serve(spans, SAMPLED)
    second, _ = _serve(spans, SAMPLED)
    ids = [span.context.span_id for span in exporter.get_finished_spans() if span.context]
    assert len(set(ids)) == 4 and first in ids and second in ids


def test_a_span_that_cannot_be_made_never_fails_the_request(
    exported: tuple[Spans, InMemorySpanExporter],
) -> None:
    """Whatever goes wrong while making a span, the call returns and the worker serves on."""
    spans, exporter = exported
    broken: Any = "tracestate as str, not bytes"
    spans.request_span(SAMPLED, 5, tracestate=broken, start_ns=1, end_ns=2)
    assert spans.batch_span(1, {"m": "not seconds"}, "served", start_ns=1, end_ns=2) is not None
    _serve(spans, SAMPLED)  # the next ones are exported as usual
    assert [span.name for span in exporter.get_finished_spans()][-2:] == [
        "headrace.batch",
        "headrace.request",
    ]
