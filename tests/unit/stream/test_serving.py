"""Serve stage: one outcome per request of a micro-batch, in the request's own format."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pyarrow as pa
import pytest

from pipelines import Pipeline, formats
from pipelines.config import ProcessingSettings
from pipelines.formats import CONTENT_TYPES, Format
from stream.types import DeadLetter, Headers, Outcome, Result
from stream.worker.decoding import Decoded, Decoder
from stream.worker.serving import Server

from .support import encoded, envelope, header, records, table, tensor


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
    assert [type(outcome) for outcome in outcomes] == [Result, DeadLetter, Result, Result]
    dead = outcomes[1]
    assert isinstance(dead, DeadLetter)
    assert dead.envelope == requests[1].envelope
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
