"""Headers of results (SPEC §4) and of dead letters (SPEC §5)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipelines.errors import SchemaError, StepError
from stream.headers import MAX_MESSAGE_HEADER, dead_letter_headers, result_headers
from stream.types import Headers
from tests.unit.stream.support import envelope, header

_REQUEST_HEADERS: Headers = (
    ("Content-Type", b"application/json; format=pandas-records"),
    ("x-dataset", b"out"),
    ("x-dataset-exclude", b"anomaly"),
    ("x-dataset-separator", b"/"),
    ("x-param-threshold", b"0.5"),
    ("traceparent", b"00-abc-01"),
    ("x-tenant", b"acme"),
    ("x-source-offset", b"999"),
)


def _result_headers(headers: Headers, *, offset: int = 0, partition: int = 0) -> Headers:
    request = envelope(b"{}", headers, offset=offset, partition=partition)
    return result_headers(request, content_type="ct", pipeline="ccfraud", version="v1")


def test_result_headers_name_the_request_pipeline_and_source() -> None:
    """A result carries its request id, content type, pipeline, version and input position."""
    headers = _result_headers((), offset=42, partition=3)
    assert headers == (
        ("x-request-id", b"requests:3:42"),
        ("content-type", b"ct"),
        ("x-pipeline", b"ccfraud"),
        ("x-pipeline-version", b"v1"),
        ("x-source-topic", b"requests"),
        ("x-source-partition", b"3"),
        ("x-source-offset", b"42"),
    )


def test_a_request_id_sent_by_the_client_is_echoed() -> None:
    """``x-request-id`` comes back unchanged, once."""
    headers = _result_headers((("x-request-id", b"client-1"),))
    assert [value for key, value in headers if key == "x-request-id"] == [b"client-1"]


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ((("X-Request-ID", b"first"), ("x-request-id", b"last")), b"last"),
        ((("x-request-id", b""),), b"requests:0:9"),
        ((("x-request-id", b"caf\xc3\xa9"),), "café".encode()),
        ((("x-request-id", b"bad-\xff"),), "bad-\ufffd".encode()),
    ],
    ids=["the last of several", "empty", "utf-8", "not utf-8"],
)
def test_the_result_echoes_the_request_id_as_utf_8(sent: Headers, echoed: bytes) -> None:
    """The last ``x-request-id`` in any case; an empty one is replaced by the position; bytes
    that are not UTF-8 come back with U+FFFD, as every header the worker writes."""
    headers = _result_headers(sent, offset=9)
    assert [value for key, value in headers if key.lower() == "x-request-id"] == [echoed]


def test_the_worker_s_traceparent_replaces_the_request_s() -> None:
    """With tracing on, the result carries the worker's ``traceparent`` where the request's
    was, and the other pass-through headers unchanged."""
    request = envelope(b"{}", _REQUEST_HEADERS)
    headers = result_headers(
        request, content_type="ct", pipeline="p", version="v", traceparent=b"00-worker-01"
    )
    assert headers[-2:] == (("traceparent", b"00-worker-01"), ("x-tenant", b"acme"))


def test_result_headers_pass_through_only_what_the_worker_did_not_consume() -> None:
    """Custom headers pass; content-type, ``x-dataset*`` and ``x-param-*`` do not."""
    headers = _result_headers(_REQUEST_HEADERS, offset=7)
    names = [key for key, _ in headers]
    assert names[-2:] == ["traceparent", "x-tenant"]
    assert header(headers, "traceparent") == "00-abc-01"
    assert not {"Content-Type", "x-dataset", "x-dataset-exclude", "x-dataset-separator"} & set(
        names
    )
    assert not [name for name in names if name.startswith("x-param-")]
    assert names.count("content-type") == 1
    assert [value for key, value in headers if key == "x-source-offset"] == [b"7"]


def test_dead_letter_headers_keep_the_request_and_say_what_failed() -> None:
    """A dead letter has the original headers plus every ``x-error-*``/``x-source-*`` one."""
    request = envelope(b"{}", _REQUEST_HEADERS[:-1], offset=5, partition=2, timestamp_ms=1234)
    error = StepError("model 'ccfraud' failed: boom", step="ccfraud", attempts=3)
    failed_at = int(datetime(2025, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC).timestamp() * 1000)
    headers = dead_letter_headers(request, error, group_id="fraud-group", failed_at_ms=failed_at)
    assert headers[: len(_REQUEST_HEADERS) - 1] == _REQUEST_HEADERS[:-1]
    assert dict(headers[len(_REQUEST_HEADERS) - 1 :]) == {
        "x-error-type": b"step_error",
        "x-error-message": b"model 'ccfraud' failed: boom",
        "x-error-step": b"ccfraud",
        "x-attempts": b"3",
        "x-source-topic": b"requests",
        "x-source-partition": b"2",
        "x-source-offset": b"5",
        "x-source-timestamp": b"1234",
        "x-consumer-group": b"fraud-group",
        "x-failed-at": b"2025-01-02T03:04:05.678+00:00",
    }


def test_a_replayed_dead_letter_gets_fresh_error_headers() -> None:
    """Error and source headers of an earlier failure are replaced, not repeated."""
    request = envelope(b"{}", (("x-error-type", b"step_timeout"), ("x-source-offset", b"1")))
    headers = dead_letter_headers(request, SchemaError("bad"), group_id="g", failed_at_ms=0)
    names = [key for key, _ in headers]
    assert names.count("x-error-type") == names.count("x-source-offset") == 1
    assert header(headers, "x-error-type") == "schema_error"
    assert header(headers, "x-error-step") == ""


def test_long_error_messages_are_clipped_to_valid_utf8() -> None:
    """A huge message is cut to the header limit, ends in '...', and still decodes."""
    message = "column 'tensor': " + "é" * 10_000
    headers = dead_letter_headers(
        envelope(b"{}"), SchemaError(message), group_id="g", failed_at_ms=0
    )
    clipped = dict(headers)["x-error-message"]
    assert len(clipped) <= MAX_MESSAGE_HEADER
    text = clipped.decode("utf-8")
    assert text.startswith("column 'tensor': éé")
    assert text.endswith("...")
    short = dead_letter_headers(
        envelope(b"{}"), SchemaError("x" * 100), group_id="g", failed_at_ms=0
    )
    assert dict(short)["x-error-message"] == b"x" * 100
