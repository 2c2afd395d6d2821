"""Decode stage: every request format, the request headers, and what becomes a dead letter."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from pipelines import Pipeline
from pipelines.config import ProcessingSettings
from pipelines.formats import Format
from stream.types import DeadLetter, Headers
from stream.worker.decoding import Decoded, Decoder, Selection
from tests.unit.stream.support import content_type, encoded, envelope, records, table, tensor

_LIMIT = 1_048_576


def _decode(
    pipeline: Pipeline,
    value: bytes,
    headers: Headers = (),
    *,
    limit: int = _LIMIT,
    processing: ProcessingSettings | None = None,
) -> Decoded | DeadLetter:
    decoder = Decoder(pipeline, processing or ProcessingSettings(), limit)
    return decoder(envelope(value, headers))


def _decoded(pipeline: Pipeline, value: bytes, headers: Headers = ()) -> Decoded:
    decoded = _decode(pipeline, value, headers)
    assert isinstance(decoded, Decoded), decoded
    return decoded


def _dead(
    pipeline: Pipeline, value: bytes, headers: Headers = (), *, limit: int = _LIMIT
) -> DeadLetter:
    decoded = _decode(pipeline, value, headers, limit=limit)
    assert isinstance(decoded, DeadLetter), decoded
    return decoded


_TWO_ROWS = table(tensor(0), tensor(1))


@pytest.mark.parametrize(
    ("payload", "headers", "expected"),
    [
        (
            encoded(_TWO_ROWS, Format.ARROW_STREAM),
            (content_type(Format.ARROW_STREAM),),
            Format.ARROW_STREAM,
        ),
        (
            encoded(_TWO_ROWS, Format.ARROW_FILE),
            (content_type(Format.ARROW_FILE),),
            Format.ARROW_FILE,
        ),
        (encoded(_TWO_ROWS, Format.OIP), (content_type(Format.OIP),), Format.OIP),
        (
            records(tensor(0), tensor(1)),
            (content_type(Format.PANDAS_RECORDS),),
            Format.PANDAS_RECORDS,
        ),
        (
            records(tensor(0), tensor(1)),
            (("content-type", b"application/json"),),
            Format.PANDAS_RECORDS,
        ),
        (encoded(_TWO_ROWS, Format.ARROW_STREAM), (), Format.ARROW_STREAM),
        (encoded(_TWO_ROWS, Format.ARROW_FILE), (), Format.ARROW_FILE),
        (encoded(_TWO_ROWS, Format.OIP), (), Format.OIP),
        (records(tensor(0), tensor(1)), (), Format.PANDAS_RECORDS),
    ],
    ids=[
        "arrow-stream",
        "arrow-file",
        "oip",
        "pandas-records",
        "plain-json",
        "sniffed-arrow-stream",
        "sniffed-arrow-file",
        "sniffed-oip",
        "sniffed-records",
    ],
)
def test_each_format_decodes_by_content_type_or_by_sniffing(
    ccfraud: Pipeline, payload: bytes, headers: Headers, expected: Format
) -> None:
    """The content-type header picks the format; without one the payload is recognised."""
    decoded = _decoded(ccfraud, payload, headers)
    assert decoded.format is expected
    assert decoded.rows == 2


def test_a_single_json_object_is_a_one_row_request(ccfraud: Pipeline) -> None:
    """A pandas-records object (not a list) is one row."""
    decoded = _decoded(ccfraud, b'{"tensor": [1.0, 2.0]}')
    assert (decoded.format, decoded.rows) == (Format.PANDAS_RECORDS, 1)


def test_arrow_requests_are_cast_to_the_model_types(ccfraud: Pipeline) -> None:
    """Arrow doubles arrive as the model's float32 tensor; other columns are kept as sent."""
    data = pa.table({"tensor": [tensor(0)], "id": ["a"]})
    decoded = _decoded(ccfraud, encoded(data, Format.ARROW_STREAM))
    assert decoded.table is not None
    assert decoded.table.schema.field("tensor").type.value_type == pa.float32()
    assert decoded.table.column("id").to_pylist() == ["a"]


def test_an_unknown_content_type_is_a_decode_error_listing_the_accepted_ones(
    ccfraud: Pipeline,
) -> None:
    """A content-type headrace does not speak is dead-lettered with the types it does."""
    dead = _dead(ccfraud, records(tensor(0)), (("content-type", b"text/csv"),))
    assert dead.error.error_type == "decode_error"
    assert "text/csv" in dead.error.message
    assert "application/vnd.apache.arrow.stream" in dead.error.message


@pytest.mark.parametrize(
    "payload", [b"\x00\x01not a request", b"", b"[1, 2", b"\xff\xff\xff\xff\x10\x00"]
)
def test_garbage_is_a_decode_error(ccfraud: Pipeline, payload: bytes) -> None:
    """Bytes that are neither Arrow nor JSON, or are cut short, are decode errors."""
    assert _dead(ccfraud, payload).error.error_type == "decode_error"


def test_dataset_headers_select_the_result_columns(ccfraud: Pipeline) -> None:
    """``x-dataset``, ``x-dataset-exclude`` and ``x-dataset-separator`` set the selection."""
    headers = (
        ("x-dataset", b"out, metadata,check_failures"),
        ("x-dataset-exclude", b"metadata.elapsed"),
        ("x-dataset-separator", b"/"),
    )
    decoded = _decoded(ccfraud, records(tensor(0)), headers)
    assert decoded.selection == Selection(
        ("out", "metadata", "check_failures"), ("metadata.elapsed",), "/"
    )


def test_without_dataset_headers_the_config_decides(ccfraud: Pipeline) -> None:
    """``processing.dataset`` applies to requests that send no ``x-dataset`` header."""
    processing = ProcessingSettings(dataset=("out",), dataset_exclude=("anomaly",))
    decoded = _decode(ccfraud, records(tensor(0)), processing=processing)
    assert isinstance(decoded, Decoded)
    assert decoded.selection == Selection(("out",), ("anomaly",), ".")
    only_separator = _decode(
        ccfraud, records(tensor(0)), (("x-dataset-separator", b"_"),), processing=processing
    )
    assert isinstance(only_separator, Decoded)
    assert only_separator.selection == Selection(("out",), ("anomaly",), "_")


def test_param_headers_become_step_parameters(ccfraud: Pipeline) -> None:
    """Each ``x-param-<name>`` header is parameter ``<name>``; other headers are not."""
    headers = (
        ("x-param-threshold", b"0.75"),
        ("X-Param-region", b"eu"),
        ("traceparent", b"00-abc-01"),
    )
    decoded = _decoded(ccfraud, records(tensor(0)), headers)
    assert dict(decoded.parameters) == {"threshold": "0.75", "region": "eu"}


def test_oip_parameters_join_the_headers_and_the_headers_win(ccfraud: Pipeline) -> None:
    """An OIP request's ``parameters`` are parameters too; an ``x-param-*`` header overrides."""
    payload = encoded(
        _TWO_ROWS, Format.OIP, oip_id="req-7", parameters={"threshold": 0.5, "mode": "fast"}
    )
    decoded = _decoded(ccfraud, payload, (("x-param-threshold", b"0.9"),))
    assert dict(decoded.parameters) == {"threshold": "0.9", "mode": "fast"}
    assert decoded.oip_id == "req-7"


def test_a_request_over_the_size_limit_is_too_large(ccfraud: Pipeline) -> None:
    """A payload over the limit is dead-lettered as ``too_large`` without being parsed."""
    payload = records(tensor(0))
    dead = _dead(ccfraud, payload, limit=len(payload) - 1)
    assert dead.error.error_type == "too_large"
    assert f"{len(payload)} bytes" in dead.error.message
    assert isinstance(_decode(ccfraud, payload, limit=len(payload)), Decoded)


def test_a_custom_json_pipeline_takes_any_json(forecast: Pipeline) -> None:
    """Custom JSON, plain JSON or sniffed JSON reach a custom pipeline as the parsed value."""
    payload = b'{"count": [1, 2, 3]}'
    for headers in ((content_type(Format.CUSTOM),), (("content-type", b"application/json"),), ()):
        decoded = _decoded(forecast, payload, headers)
        assert decoded.format is Format.CUSTOM
        assert decoded.value == {"count": [1, 2, 3]}


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (encoded(_TWO_ROWS, Format.ARROW_STREAM), (content_type(Format.ARROW_STREAM),)),
        (encoded(_TWO_ROWS, Format.ARROW_STREAM), ()),
        (encoded(_TWO_ROWS, Format.ARROW_FILE), ()),
        (encoded(_TWO_ROWS, Format.OIP), (content_type(Format.OIP),)),
        (records(tensor(0)), (content_type(Format.PANDAS_RECORDS),)),
    ],
    ids=["arrow-stream", "sniffed-arrow-stream", "sniffed-arrow-file", "oip", "pandas-records"],
)
def test_a_custom_json_pipeline_rejects_tables_with_a_message(
    forecast: Pipeline, payload: bytes, headers: Headers
) -> None:
    """Arrow, OIP or explicit pandas-records sent to a custom-JSON pipeline are decode errors."""
    dead = _dead(forecast, payload, headers)
    assert dead.error.error_type == "decode_error"
    assert "pipeline 'forecast' takes custom JSON" in dead.error.message


def test_custom_json_sent_to_a_table_pipeline_is_a_decode_error(ccfraud: Pipeline) -> None:
    """A table pipeline says custom JSON needs a pipeline that accepts it."""
    dead = _dead(ccfraud, b'{"count": [1]}', (content_type(Format.CUSTOM),))
    assert dead.error.error_type == "decode_error"
    assert "custom-json" in dead.error.message


@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE, Format.OIP])
def test_schema_errors_of_tables_are_dead_letters_at_decode_time(
    ccfraud: Pipeline, fmt: Format
) -> None:
    """A table whose tensor has 28 values is a ``schema_error`` naming the column and shape."""
    dead = _dead(ccfraud, encoded(table(tensor(0, width=28)), fmt))
    assert dead.error.error_type == "schema_error"
    assert "'tensor'" in dead.error.message
    assert "29" in dead.error.message and "28" in dead.error.message


def test_a_missing_column_is_a_schema_error_naming_it(ccfraud: Pipeline) -> None:
    """A table without the model's input column names the column it expected."""
    data = pa.table({"features": pa.array([tensor(0)], pa.list_(pa.float32()))})
    dead = _dead(ccfraud, encoded(data, Format.ARROW_STREAM))
    assert dead.error.error_type == "schema_error"
    assert "missing column 'tensor'" in dead.error.message


def test_requests_that_can_share_a_batch_get_the_same_batch_key(ccfraud: Pipeline) -> None:
    """Same columns and parameters batch together; different parameters do not."""
    first = _decoded(ccfraud, records(tensor(0)))
    second = _decoded(ccfraud, records(tensor(1), tensor(2)))
    other = _decoded(ccfraud, records(tensor(0)), (("x-param-threshold", b"0.1"),))
    assert first.batch_key == second.batch_key != other.batch_key
    arrow = _decoded(ccfraud, encoded(_TWO_ROWS, Format.ARROW_STREAM))
    arrow_file = _decoded(ccfraud, encoded(_TWO_ROWS, Format.ARROW_FILE))
    assert arrow.batch_key == arrow_file.batch_key != first.batch_key


def test_an_arrow_request_with_a_repeated_column_is_a_schema_error(ccfraud: Pipeline) -> None:
    """``tensor, id, id`` is dead-lettered as a schema error naming ``id``, not a crash."""
    values = pa.array([tensor(0)], pa.list_(pa.float32()))
    data = pa.Table.from_arrays([values, pa.array([1]), pa.array([2])], ["tensor", "id", "id"])
    dead = _dead(ccfraud, encoded(data, Format.ARROW_STREAM))
    assert dead.error.error_type == "schema_error"
    assert "column 'id' appears 2 times" in dead.error.message


@pytest.mark.parametrize(
    ("shape", "error_type", "phrase"),
    [
        ([1, 0, 4_294_967_296], "decode_error", "shape [1, 0, 4294967296] does not fit"),
        ([3_000_000_000, 0], "too_large", "3000000000 rows, over the limit of 1000000 rows"),
    ],
)
def test_an_oip_shape_that_cannot_be_held_is_a_dead_letter_naming_it(
    ccfraud: Pipeline, shape: list[int], error_type: str, phrase: str
) -> None:
    """Shapes that overflow 32-bit offsets or ask for billions of rows name the shape."""
    doc = {"inputs": [{"name": "tensor", "shape": shape, "datatype": "FP32", "data": []}]}
    dead = _dead(ccfraud, orjson.dumps(doc), (content_type(Format.OIP),))
    assert dead.error.error_type == error_type
    assert phrase in dead.error.message


def test_the_decoded_size_bounds_come_from_the_processing_settings(ccfraud: Pipeline) -> None:
    """``max_request_rows`` and ``max_decoded_bytes`` refuse requests as too_large, by key."""
    processing = ProcessingSettings(max_request_rows=2, max_decoded_bytes=200_000)
    three = _decode(ccfraud, records(tensor(0), tensor(1), tensor(2)), processing=processing)
    assert isinstance(three, DeadLetter)
    assert three.error.error_type == "too_large"
    assert "processing.max_request_rows" in three.error.message
    bomb = pa.table({"tensor": pa.array([[0.0] * 29] * 2, pa.list_(pa.float32()))})
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, bomb.schema, options=options) as writer:
        writer.write_table(pa.concat_tables([bomb] * 1_000).combine_chunks())
    processing = ProcessingSettings(max_request_rows=10_000, max_decoded_bytes=200_000)
    inflated = _decode(ccfraud, sink.getvalue().to_pybytes(), processing=processing)
    assert isinstance(inflated, DeadLetter)
    assert inflated.error.error_type == "too_large"
    assert "over the limit of 200000 bytes (processing.max_decoded_bytes)" in inflated.error.message
    assert isinstance(
        _decode(ccfraud, records(tensor(0), tensor(1)), processing=processing), Decoded
    )


class _Conform(Pipeline):
    """ccfraud, whose conform raises what the test gives it."""

    error: Exception = RuntimeError("conform broke")

    def conform(self, table: pa.Table) -> pa.Table:
        raise self.error


@pytest.mark.parametrize(
    ("error", "error_type", "phrase"),
    [
        (KeyError("tensor"), "schema_error", "KeyError: 'tensor'"),
        (MemoryError("no room"), "too_large", "MemoryError: no room"),
    ],
)
def test_any_exception_while_conforming_is_the_request_s_dead_letter(
    ccfraud: Pipeline, error: Exception, error_type: str, phrase: str
) -> None:
    """An exception of any type in the conform stage becomes a dead letter naming it."""
    pipeline = _Conform(ccfraud.settings)
    pipeline.error = error
    dead = _dead(pipeline, encoded(_TWO_ROWS, Format.ARROW_STREAM))
    assert dead.error.error_type == error_type
    assert phrase in dead.error.message
    assert "conforming the request" in dead.error.message


def test_any_exception_while_decoding_is_a_decode_error(
    ccfraud: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the format code raises, the decoder answers with a decode_error naming it."""

    def broken(payload: bytes, *args: object, **options: object) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr("pipelines.formats.parse_records", broken)
    dead = _dead(ccfraud, records(tensor(0)))
    assert dead.error.error_type == "decode_error"
    assert "IndexError: list index out of range" in dead.error.message


def test_requests_sharing_headers_are_each_judged_by_their_own_time_and_deadline(
    ccfraud: Pipeline,
) -> None:
    """The decoder reads a set of headers once for every request that repeats it; what
    depends on the request (its timestamp, the time it is consumed, its trace span) does not
    repeat with them."""
    now = [1_700_000_000_000]
    decoder = Decoder(
        ccfraud, ProcessingSettings(max_request_age_ms=1000), _LIMIT, wall_clock_ms=lambda: now[0]
    )
    traced = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers: Headers = (
        content_type(Format.PANDAS_RECORDS),
        ("x-deadline", b"%d" % (now[0] + 500)),
        ("traceparent", traced),
    )
    first = decoder(envelope(records(tensor(0)), headers, timestamp_ms=now[0]))
    now[0] += 501
    late = decoder(envelope(records(tensor(1)), headers, timestamp_ms=now[0]))
    aged = decoder(envelope(records(tensor(2)), headers[:1], timestamp_ms=now[0] - 1001))
    young = decoder(envelope(records(tensor(3)), headers[:1], timestamp_ms=now[0] - 999))
    again = decoder(envelope(records(tensor(4)), headers[:1] + headers[2:], timestamp_ms=now[0]))
    assert isinstance(first, Decoded) and isinstance(young, Decoded)
    assert isinstance(late, DeadLetter) and "(x-deadline) passed 1 ms" in late.error.message
    assert isinstance(aged, DeadLetter) and "max_request_age_ms=1000" in aged.error.message
    assert isinstance(again, Decoded)
    assert first.trace is not None and again.trace is not None
    assert first.trace[1] != again.trace[1]  # a span of its own for each request


def test_a_request_past_its_deadline_is_expired_whatever_its_content_type(
    ccfraud: Pipeline,
) -> None:
    """Expiry is judged before the content type, for the first request with those headers
    and for every one after it."""
    now = 1_700_000_000_000
    decoder = Decoder(ccfraud, ProcessingSettings(), _LIMIT, wall_clock_ms=lambda: now)
    expired = (("content-type", b"text/csv"), ("x-deadline", b"%d" % (now - 1)))
    wanted = (("content-type", b"text/csv"), ("x-deadline", b"%d" % (now + 1)))
    outcomes = [decoder(envelope(records(tensor(0)), h)) for h in (expired, wanted) * 2]
    dead = [outcome for outcome in outcomes if isinstance(outcome, DeadLetter)]
    assert [letter.error.error_type for letter in dead] == ["expired", "decode_error"] * 2
    assert all("text/csv" in letter.error.message for letter in dead[1::2])


def test_requests_with_headers_of_their_own_each_get_their_own_reading(
    ccfraud: Pipeline,
) -> None:
    """A stream whose headers differ per request (a request id each) is read right throughout,
    past the number of header sets the decoder keeps."""
    decoder = Decoder(ccfraud, ProcessingSettings(), _LIMIT)
    for index in range(700):
        dataset = b"out" if index % 3 else b"metadata"
        headers = (
            ("x-request-id", b"r-%d" % index),
            ("x-dataset", dataset),
            ("x-param-index", b"%d" % index),
        )
        decoded = decoder(envelope(records(tensor(index)), headers, offset=index))
        assert isinstance(decoded, Decoded)
        assert decoded.selection.dataset == (dataset.decode(),)
        assert decoded.parameters == (("index", str(index)),)
