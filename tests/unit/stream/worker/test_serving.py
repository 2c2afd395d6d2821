"""Serve stage: one outcome per request of a micro-batch, in the request's own format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa
import pytest

from pipelines import Pipeline, formats
from pipelines.config import ProcessingSettings
from pipelines.errors import StepError
from pipelines.formats import CONTENT_TYPES, Format
from pipelines.pipeline import BatchResult
from stream.headers import dead_letter_headers
from stream.types import DeadLetter, Headers, Outcome, Result
from stream.worker.decoding import Decoded, Decoder
from stream.worker.serving import Server
from tests.unit.stream.support import encoded, envelope, header, records, table, tensor


def _requests(pipeline: Pipeline, *messages: tuple[bytes, Headers]) -> list[Decoded]:
    decoder = Decoder(pipeline, ProcessingSettings(), 1_048_576)
    decoded = []
    for offset, (value, headers) in enumerate(messages):
        request = decoder(envelope(value, headers, offset=offset, key=f"k{offset}".encode()))
        assert isinstance(request, Decoded), request
        decoded.append(request)
    return decoded


def _result(outcome: Outcome) -> Result:
    assert isinstance(outcome, Result), outcome
    return outcome


def _table(outcome: Outcome, fmt: Format = Format.PANDAS_RECORDS) -> pa.Table:
    served = formats.decode_response(_result(outcome).value, fmt)
    assert isinstance(served, pa.Table)
    return served


def _tensors(served: pa.Table, column: str = "in.tensor") -> list[list[float]]:
    return [[round(v, 4) for v in row] for row in served.column(column).to_pylist()]


def _serve(pipeline: Pipeline, requests: Sequence[Decoded]) -> list[Outcome]:
    return Server(pipeline).serve(requests)


def _the_dead_letter(
    outcomes: Sequence[Outcome], requests: Sequence[Decoded], index: int
) -> DeadLetter:
    """Outcome ``index``, the batch's only dead letter, for request ``index``; the rest results."""
    assert [type(outcome) for outcome in outcomes] == [
        DeadLetter if position == index else Result for position in range(len(requests))
    ]
    dead = outcomes[index]
    assert isinstance(dead, DeadLetter)
    assert dead.envelope == requests[index].envelope
    return dead


def test_a_bad_request_in_a_batch_is_dead_lettered_and_its_neighbours_are_served(
    ccfraud: Pipeline,
) -> None:
    """A 28-float tensor among 29-float ones fails alone; the others get their own rows back."""
    good = [[tensor(0)], [tensor(1), tensor(2), tensor(3)], [tensor(4), tensor(5)]]
    requests = _requests(
        ccfraud,
        (records(*good[0]), ()),
        (records(tensor(9, width=28)), ()),
        (records(*good[1]), ()),
        (records(*good[2]), ()),
    )
    outcomes = _serve(ccfraud, requests)
    dead = _the_dead_letter(outcomes, requests, 1)
    assert dead.error.error_type == "schema_error"
    assert "'tensor'" in dead.error.message and "28" in dead.error.message
    served = [outcomes[0], outcomes[2], outcomes[3]]
    assert [_result(outcome).rows for outcome in served] == [1, 3, 2]
    for outcome, rows in zip(served, good, strict=True):
        assert _tensors(_table(outcome)) == rows


def test_served_rows_match_the_in_process_pipeline(ccfraud: Pipeline) -> None:
    """A batched request gets the same model outputs as ``Pipeline.infer`` on its rows."""
    rows = [tensor(0), tensor(7)]
    (outcome,) = _serve(ccfraud, _requests(ccfraud, (records(*rows), ())))
    expected = ccfraud.infer(table(*rows))
    served = _table(outcome)
    assert _tensors(served, "out.dense_1") == _tensors(expected, "out.dense_1")
    assert served.column("anomaly.fraud").to_pylist() == expected["anomaly.fraud"].to_pylist()


def test_each_request_gets_the_columns_it_asked_for(ccfraud: Pipeline) -> None:
    """Requests of one batch with different ``x-dataset*`` headers get different columns."""
    payload = records(tensor(0))
    requests = _requests(
        ccfraud,
        (payload, ()),
        (payload, (("x-dataset", b"out"),)),
        (payload, (("x-dataset", b"*,metadata"), ("x-dataset-exclude", b"in,time"))),
        (payload, (("x-dataset", b"out.dense_1,check_failures"), ("x-dataset-separator", b"/"))),
    )
    columns = [_table(outcome).column_names for outcome in _serve(ccfraud, requests)]
    assert columns == [
        ["time", "in.tensor", "out.dense_1", "check_failures", "anomaly.fraud"],
        ["out.dense_1"],
        [
            "out.dense_1",
            "check_failures",
            "anomaly.fraud",
            "metadata.elapsed",
            "metadata.last_model",
            "metadata.pipeline_version",
        ],
        ["out/dense_1", "check_failures"],
    ]


def test_an_unknown_dataset_field_fails_only_its_request(ccfraud: Pipeline) -> None:
    """Asking for a column that does not exist dead-letters that request, not the batch."""
    payload = records(tensor(0))
    requests = _requests(ccfraud, (payload, ()), (payload, (("x-dataset", b"out.nothing"),)))
    outcomes = _serve(ccfraud, requests)
    assert isinstance(outcomes[0], Result)
    assert isinstance(outcomes[1], DeadLetter)
    assert "nothing" in outcomes[1].error.message


def test_oip_responses_echo_each_request_id(ccfraud: Pipeline) -> None:
    """OIP requests batched together each get a v2 response with their own id and rows."""
    first = encoded(table(tensor(0)), Format.OIP, oip_id="first")
    second = encoded(table(tensor(1), tensor(2)), Format.OIP, oip_id="second")
    requests = _requests(ccfraud, (first, ()), (second, ()))
    documents = [orjson.loads(_result(o).value) for o in _serve(ccfraud, requests)]
    assert [doc["id"] for doc in documents] == ["first", "second"]
    assert {doc["model_name"] for doc in documents} == {"ccfraud"}
    assert {doc["model_version"] for doc in documents} == {ccfraud.version}
    dense = [next(o for o in doc["outputs"] if o["name"] == "out.dense_1") for doc in documents]
    assert [output["shape"] for output in dense] == [[1, 1], [2, 1]]


@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE])
def test_arrow_requests_get_arrow_results_in_row_order(ccfraud: Pipeline, fmt: Format) -> None:
    """An Arrow request's result is Arrow of the same kind, its rows in request order."""
    rows = [tensor(3), tensor(1), tensor(2)]
    (outcome,) = _serve(ccfraud, _requests(ccfraud, (encoded(table(*rows), fmt), ())))
    served = _table(outcome, fmt)
    assert _tensors(served) == rows
    assert served.column("in.id").to_pylist() == [0, 1, 2]
    assert header(_result(outcome).headers, "content-type") == CONTENT_TYPES[fmt]


def test_results_carry_identity_provenance_and_pass_through_headers(ccfraud: Pipeline) -> None:
    """Each result names its format, pipeline, version and source, plus the request's headers."""
    requests = _requests(
        ccfraud,
        (records(tensor(0)), (("x-request-id", b"abc"), ("traceparent", b"00-1-01"))),
        (records(tensor(1)), ()),
    )
    first, second = (_result(outcome) for outcome in _serve(ccfraud, requests))
    assert header(first.headers, "x-request-id") == "abc"
    assert header(first.headers, "content-type") == CONTENT_TYPES[Format.PANDAS_RECORDS]
    assert header(first.headers, "x-pipeline") == "ccfraud"
    assert header(first.headers, "x-pipeline-version") == ccfraud.version
    assert header(first.headers, "traceparent") == "00-1-01"
    assert header(second.headers, "x-request-id") == "requests:0:1"
    assert header(second.headers, "x-source-offset") == "1"
    assert header(second.headers, "traceparent") is None


def test_custom_json_requests_are_served_one_by_one(forecast: Pipeline) -> None:
    """Each custom-JSON request gets the last step's JSON value, as the pipeline computes it."""
    values = [{"count": list(range(1, 15))}, {"count": [5] * 14}]
    requests = _requests(forecast, *((orjson.dumps(value), ()) for value in values))
    outcomes = _serve(forecast, requests)
    assert [orjson.loads(_result(o).value) for o in outcomes] == [
        forecast.infer(value) for value in values
    ]
    assert header(_result(outcomes[0]).headers, "content-type") == CONTENT_TYPES[Format.CUSTOM]


def _ids(*ids: int) -> bytes:
    """An Arrow request of one ccfraud row per id, the id echoed as ``in.id``."""
    data = pa.table(
        {
            "tensor": pa.array([tensor(i) for i in range(len(ids))], pa.list_(pa.float32())),
            "id": pa.array(ids, pa.int64()),
        }
    )
    return encoded(data, Format.ARROW_STREAM)


def _served_ids(outcome: Outcome) -> list[int]:
    ids: list[int] = _table(outcome, Format.ARROW_STREAM).column("in.id").to_pylist()
    return ids


class _Fragile(Pipeline):
    """ccfraud, except that a batch holding id -1 raises what no step would: a RuntimeError."""

    def serve_batch(self, table: pa.Table, *args: Any, **options: Any) -> BatchResult:
        if -1 in table.column("id").to_pylist():
            raise RuntimeError("poisoned batch")
        return super().serve_batch(table, *args, **options)


def test_a_batch_failing_with_any_exception_is_isolated_per_request(ccfraud: Pipeline) -> None:
    """An unexpected exception from serving a batch dead-letters only the request that causes
    it, as a step_error naming the exception; its neighbours get their own rows."""
    fragile = _Fragile(ccfraud.settings)
    requests = _requests(fragile, *((_ids(*ids), ()) for ids in ([1, 2], [-1], [3], [4, 5])))
    outcomes = _serve(fragile, requests)
    dead = _the_dead_letter(outcomes, requests, 1)
    assert dead.error.error_type == "step_error"
    assert "RuntimeError: poisoned batch" in dead.error.message
    assert [_served_ids(outcomes[i]) for i in (0, 2, 3)] == [[1, 2], [3], [4, 5]]


def test_an_encoder_failing_with_any_exception_fails_only_its_request(
    ccfraud: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while encoding one request's rows is that request's
    output_error, naming the exception; the batch's other requests are encoded."""
    encode_many = formats.encode_many

    def fussy(table: pa.Table, *args: Any, **options: Any) -> list[bytes]:
        if -1 in table.column("in.id").to_pylist():
            raise ValueError("cannot write id -1")
        return encode_many(table, *args, **options)

    monkeypatch.setattr(formats, "encode_many", fussy)
    requests = _requests(ccfraud, *((_ids(*ids), ()) for ids in ([1], [2, -1], [3])))
    outcomes = _serve(ccfraud, requests)
    dead = _the_dead_letter(outcomes, requests, 1)
    assert dead.error.error_type == "output_error"
    assert "ValueError: cannot write id -1" in dead.error.message
    assert [_served_ids(outcomes[i]) for i in (0, 2)] == [[1], [3]]


def test_header_text_that_is_not_utf8_never_breaks_result_or_dead_letter_headers(
    ccfraud: Pipeline,
) -> None:
    """Undecodable header values, names holding undecodable bytes and error messages with
    lone surrogates still give headers a producer can send: bad text as U+FFFD or ``?``."""
    odd = (("x-request-id", b"\xff\xfe"), ("x-\udcff", b"\xff"), ("x-param-\udcfe", b"\x80"))
    good, bad = _serve(
        ccfraud,
        _requests(ccfraud, (records(tensor(0)), odd), (records(tensor(1, width=28)), odd)),
    )
    assert isinstance(good, Result)
    assert isinstance(bad, DeadLetter)
    error = StepError("python step 'p' raised ValueError: no \udcff here", step="p\udcff")
    letters = [
        dead_letter_headers(outcome.envelope, outcome_error, group_id="g", failed_at_ms=0)
        for outcome, outcome_error in ((bad, bad.error), (bad, error))
    ]
    for headers in (good.headers, *letters):
        assert [(key.encode(), value) for key, value in headers]  # strict UTF-8 names
        assert all(isinstance(value, bytes) for _, value in headers)
    assert header(good.headers, "x-request-id") == "\ufffd\ufffd"
    assert dict(good.headers)["x-?"] == b"\xff"  # values pass through as the bytes they were
    assert header(letters[1], "x-error-message") == "python step 'p' raised ValueError: no ? here"
    assert header(letters[1], "x-error-step") == "p?"
