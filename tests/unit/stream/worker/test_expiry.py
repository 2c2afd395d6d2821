"""Deadlines and trace context in the worker loop (SPEC §3, §5): what a user of
``x-deadline``, ``processing.max_request_age_ms`` and ``traceparent`` sees come out."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from pipelines import Pipeline
from stream.types import Envelope
from stream.worker.tracing import Spans, parse_traceparent
from tests.unit.stream.support import records, tensor
from tests.unit.stream.worker.rig import WAIT, make_rig

_JSON = ("content-type", b"application/json; format=pandas-records")
_PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def header(record: Envelope, name: str) -> bytes | None:
    return next((value for key, value in record.headers if key == name), None)


def _deadline(ms: int) -> tuple[str, bytes]:
    return ("x-deadline", str(ms).encode())


def test_a_request_past_its_deadline_is_dead_lettered_as_expired_and_never_run(
    ccfraud: Pipeline,
) -> None:
    rig = make_rig(ccfraud)
    now = rig.clock.wall_ms()
    rig.send(records(tensor(0)), headers=(_JSON, _deadline(now - 1500)))
    rig.send(records(tensor(1)), headers=(_JSON, _deadline(now + 60_000)))
    rig.step()
    rig.step(WAIT)
    (dead,) = rig.dead_letters()
    assert header(dead, "x-error-type") == b"expired"
    message = (header(dead, "x-error-message") or b"").decode()
    assert "(x-deadline) passed 1500 ms before it was consumed" in message
    assert len(rig.results()) == 1
    assert [rows for rows, _ in rig.metrics.batches] == [1]  # it never entered a batch
    assert rig.metrics.dead_letter_types == ["expired"]


def test_an_expired_request_is_not_decoded(ccfraud: Pipeline) -> None:
    """Its payload is never read: garbage past its deadline is expired, not a decode error."""
    rig = make_rig(ccfraud)
    rig.send(b"\x00not json", headers=(_JSON, _deadline(rig.clock.wall_ms() - 1)))
    rig.step()
    (dead,) = rig.dead_letters()
    assert header(dead, "x-error-type") == b"expired"


def test_a_backlog_older_than_max_request_age_is_shed(ccfraud: Pipeline) -> None:
    rig = make_rig(ccfraud, processing={"max_request_age_ms": 1000})
    for seed in range(5):
        rig.send(records(tensor(seed)), headers=(_JSON,))
    rig.clock.advance(2.5)  # the worker comes back after an outage
    rig.send(records(tensor(9)), headers=(_JSON,))
    rig.step()
    for _ in range(3):
        rig.step(WAIT)
    dead = rig.dead_letters()
    assert [header(d, "x-error-type") for d in dead] == [b"expired"] * 5
    message = (header(dead[0], "x-error-message") or b"").decode()
    assert "processing.max_request_age_ms=1000" in message
    assert "passed 1500 ms before it was consumed" in message
    assert len(rig.results()) == 1


def test_a_malformed_deadline_is_a_decode_error_naming_the_header(ccfraud: Pipeline) -> None:
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)), headers=(_JSON, ("x-deadline", b"tomorrow")))
    rig.step()
    (dead,) = rig.dead_letters()
    assert header(dead, "x-error-type") == b"decode_error"
    assert b"x-deadline" in (header(dead, "x-error-message") or b"")


def test_results_and_dead_letters_carry_the_workers_traceparent(ccfraud: Pipeline) -> None:
    rig = make_rig(ccfraud)
    trace = (("traceparent", _PARENT), ("tracestate", b"vendor=1"))
    rig.send(records(tensor(0)), headers=(_JSON, *trace))
    rig.send(b'[{"tensor": "not numbers"}]', headers=(_JSON, *trace))
    rig.send(records(tensor(1)), headers=(_JSON, ("traceparent", b"not-a-traceparent")))
    rig.step()
    rig.step(WAIT)
    traced, untraced = rig.results()
    (dead,) = rig.dead_letters()
    request = parse_traceparent(_PARENT)
    assert request is not None
    spans = set()
    for record in (traced, dead):
        sent = parse_traceparent(header(record, "traceparent") or b"")
        assert sent is not None
        assert (sent.trace_id, sent.flags) == (request.trace_id, request.flags)
        assert sent.span_id != request.span_id
        assert header(record, "tracestate") == b"vendor=1"
        spans.add(sent.span_id)
    assert len(spans) == 2  # a span of its own for each request
    assert header(untraced, "traceparent") == b"not-a-traceparent"  # passed through


def test_the_worker_exports_a_span_per_traced_request_linked_to_its_batch(
    ccfraud: Pipeline, exported: tuple[Spans, InMemorySpanExporter]
) -> None:
    spans, exporter = exported
    rig = make_rig(ccfraud, spans=spans)
    rig.send(records(tensor(0)), headers=(_JSON, ("traceparent", _PARENT)))
    rig.send(records(tensor(1)), headers=(_JSON,))  # untraced: no span of its own
    rig.send(b'[{"tensor": "not numbers"}]', headers=(_JSON, ("traceparent", _PARENT)))
    rig.step()
    rig.step(WAIT)
    (result, _) = rig.results()
    (dead,) = rig.dead_letters()
    finished = exporter.get_finished_spans()
    requests = {span.context.span_id: span for span in finished if span.name == "headrace.request"}
    batches = [span for span in finished if span.name == "headrace.batch"]
    assert len(batches) == 2  # the bad request's values have types of their own: a batch apart
    batch = batches[0]
    assert batch.attributes is not None and batch.attributes["headrace.batch.rows"] == 2
    assert "headrace.step.ccfraud.seconds" in batch.attributes
    served_id = parse_traceparent(header(result, "traceparent") or b"")
    dead_id = parse_traceparent(header(dead, "traceparent") or b"")
    assert served_id is not None and dead_id is not None
    assert set(requests) == {served_id.span_id, dead_id.span_id}
    served, failed = requests[served_id.span_id], requests[dead_id.span_id]
    for span in (served, failed):
        assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
        assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert [link.context for link in served.links] == [batch.context]
    assert served.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["headrace.error_type"] == "schema_error"
