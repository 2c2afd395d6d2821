"""Wire formats: every format both ways, sniffing, and the errors a user sees."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.errors import DecodeError, OutputError, SchemaError, TooLarge
from pipelines.formats import (
    CONTENT_TYPES,
    Format,
    JsonValue,
    Limits,
    decode,
    decode_response,
    encode,
    encode_many,
    encode_request,
    encode_value,
    format_for_content_type,
    parse_records,
    records_signature,
    table_from_pandas,
    table_from_records,
    table_from_requests,
    table_to_pandas,
)

TABLE_FORMATS = [Format.ARROW_STREAM, Format.ARROW_FILE, Format.PANDAS_RECORDS, Format.OIP]
FLOAT_MATRIX = pa.list_(pa.list_(pa.float32()))


def _sample(rows: int = 3) -> pa.Table:
    """A result-like table with every column kind the formats must carry."""
    rng = np.random.default_rng(rows)
    return pa.table(
        {
            "time": pa.array(1_700_000_000_123 + np.arange(rows), pa.timestamp("ms", "UTC")),
            "score": pa.array(rng.random(rows), pa.float32()),
            "weight": pa.array(rng.random(rows), pa.float64()),
            "count": pa.array(np.arange(rows), pa.int64()),
            "flags": pa.array(np.arange(rows) % 2, pa.int8()),
            "tensor": pa.array(
                list(rng.random((rows, 29), dtype=np.float32)), pa.list_(pa.float32())
            ),
            "image": pa.array(
                [m.tolist() for m in rng.random((rows, 8, 8), dtype=np.float32)], FLOAT_MATRIX
            ),
            "label": pa.array([f"row {i}" for i in range(rows)]),
            "ok": pa.array([i % 2 == 0 for i in range(rows)]),
        }
    )


def _with_nulls() -> pa.Table:
    return pa.table(
        {
            "maybe_int": pa.array([1, None, 3], pa.int64()),
            "maybe_float": pa.array([0.5, None, 1.5], pa.float64()),
            "maybe_label": pa.array(["a", None, "c"]),
        }
    )


def _arrow_stream(table: pa.Table) -> bytes:
    return encode_request(table, Format.ARROW_STREAM)


# --- content types --------------------------------------------------------------------------


def test_content_types_are_the_documented_header_values() -> None:
    """Each format's content-type header is the one SPEC §3 lists."""
    assert dict(CONTENT_TYPES) == {
        Format.ARROW_STREAM: "application/vnd.apache.arrow.stream",
        Format.ARROW_FILE: "application/vnd.apache.arrow.file",
        Format.PANDAS_RECORDS: "application/json; format=pandas-records",
        Format.OIP: "application/json; format=oip",
        Format.CUSTOM: "application/json; format=custom",
    }


@pytest.mark.parametrize("fmt", list(Format))
def test_every_content_type_names_its_format(fmt: Format) -> None:
    """The content type headrace writes for a format reads back as that format."""
    assert format_for_content_type(CONTENT_TYPES[fmt]) is fmt


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("APPLICATION/VND.APACHE.ARROW.STREAM", Format.ARROW_STREAM),
        ("application/vnd.apache.arrow.file; charset=binary", Format.ARROW_FILE),
        ("application/json;format=oip", Format.OIP),
        ("application/json ; format = OIP", Format.OIP),
        ('application/json; format="pandas-records"', Format.PANDAS_RECORDS),
        ("application/json; charset=utf-8; format=custom", Format.CUSTOM),
        ("application/json; format=custom-json", Format.CUSTOM),
        ("application/json", Format.PANDAS_RECORDS),
        (" application/json; charset=utf-8 ", Format.PANDAS_RECORDS),
        (None, None),
        ("", None),
        ("   ", None),
    ],
)
def test_content_type_parsing_tolerates_case_and_whitespace(
    header: str | None, expected: Format | None
) -> None:
    """Case, spaces, quotes and extra parameters do not change the format; no header means sniff."""
    assert format_for_content_type(header) is expected


@pytest.mark.parametrize("header", ["text/csv", "application/json; format=split"])
def test_unknown_content_type_names_it_and_lists_accepted_ones(header: str) -> None:
    """An unsupported content type is a DecodeError naming it and the accepted types."""
    with pytest.raises(DecodeError) as caught:
        format_for_content_type(header)
    assert repr(header) in str(caught.value)
    assert "application/json; format=oip" in str(caught.value)


def test_unknown_content_type_fails_decode() -> None:
    """decode refuses a payload whose content type it does not know."""
    with pytest.raises(DecodeError, match="unsupported content-type 'text/csv'"):
        decode(b"a,b\n1,2\n", "text/csv")


# --- sniffing -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_payload_without_content_type_is_sniffed(fmt: Format) -> None:
    """Without a content type each table format is recognised from its bytes."""
    request = decode(encode_request(_sample(), fmt))
    assert request.format is fmt
    assert request.table is not None
    assert request.table.num_rows == 3


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_content_type_selects_the_format(fmt: Format) -> None:
    """With a content type the payload is read in that format."""
    request = decode(encode_request(_sample(), fmt), CONTENT_TYPES[fmt])
    assert request.format is fmt
    assert request.table is not None
    assert request.table.column_names == _sample().column_names


def test_sniffed_json_is_custom_for_a_custom_pipeline() -> None:
    """JSON sent without a content type to a pipeline that takes custom JSON stays a value."""
    request = decode(b' {"anything": [1, 2]}', custom=True)
    assert request.format is Format.CUSTOM
    assert request.value == {"anything": [1, 2]}
    assert request.table is None


def test_plain_json_content_type_follows_the_pipeline() -> None:
    """Plain application/json is custom JSON for a custom pipeline, pandas-records otherwise."""
    payload = b'[{"a": 1}]'
    assert decode(payload, "application/json", custom=True).format is Format.CUSTOM
    assert decode(payload, "application/json").format is Format.PANDAS_RECORDS


def test_explicit_custom_content_type_accepts_any_json() -> None:
    """The custom content type hands over any JSON value, scalars included."""
    request = decode(b"42", CONTENT_TYPES[Format.CUSTOM])
    assert request.format is Format.CUSTOM
    assert request.value == 42


def test_object_with_inputs_of_numbers_is_pandas_records() -> None:
    """Only an 'inputs' list of tensor objects makes sniffed JSON an OIP request."""
    request = decode(b'{"inputs": [1, 2, 3]}')
    assert request.format is Format.PANDAS_RECORDS
    assert request.table is not None
    assert request.table.to_pylist() == [{"inputs": [1, 2, 3]}]


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
@pytest.mark.parametrize("rows", [1, 3])
def test_request_round_trip(fmt: Format, rows: int) -> None:
    """encode_request then decode gives the table back (JSON records cast back exactly)."""
    table = _sample(rows)
    decoded = decode(encode_request(table, fmt)).table
    assert decoded is not None
    if fmt is Format.PANDAS_RECORDS:
        decoded = decoded.cast(table.schema)
    assert decoded.equals(table)


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
@pytest.mark.parametrize("rows", [1, 3])
def test_response_round_trip(fmt: Format, rows: int) -> None:
    """encode then decode_response gives the result table back (JSON records cast back exactly)."""
    table = _sample(rows)
    decoded = decode_response(encode(table, fmt, model_name="m"), fmt)
    assert isinstance(decoded, pa.Table)
    if fmt is Format.PANDAS_RECORDS:
        decoded = decoded.cast(table.schema)
    assert decoded.equals(table)


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_nulls_round_trip(fmt: Format) -> None:
    """Null values survive every format as nulls."""
    decoded = decode(encode_request(_with_nulls(), fmt)).table
    assert decoded is not None
    assert decoded.to_pylist() == _with_nulls().to_pylist()


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_slices_and_chunks_encode_only_their_rows(fmt: Format) -> None:
    """A sliced or multi-chunk result encodes exactly its own rows, in order."""
    table = _sample(5)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 3)]).slice(1, 3)
    decoded = decode_response(encode(chunked, fmt), fmt)
    assert isinstance(decoded, pa.Table)
    assert decoded.cast(table.schema).equals(table.slice(1, 3))


def test_custom_json_round_trip() -> None:
    """encode_value then decode_response gives the custom JSON value back."""
    value: JsonValue = {
        "scores": [0.25, 0.5],
        "label": "fraud",
        "nested": {"ok": True, "none": None},
    }
    assert decode_response(encode_value(value), Format.CUSTOM) == value


def test_custom_json_value_may_hold_numpy() -> None:
    """A custom step's numpy arrays are written as JSON arrays."""
    value = {"v": np.array([1.5, 2.5], np.float32)}
    encoded = encode_value(value)  # type: ignore[arg-type]  # numpy is accepted at run time
    assert orjson.loads(encoded) == {"v": [1.5, 2.5]}


# --- pandas-records -------------------------------------------------------------------------


def test_one_object_is_one_row() -> None:
    """A single JSON object is a one-row request."""
    request = decode(b'{"tensor": [1.5, 2.5], "id": "a"}')
    assert request.table is not None
    assert request.table.to_pylist() == [{"tensor": [1.5, 2.5], "id": "a"}]


def test_records_types_follow_json() -> None:
    """Numbers are int64 or float64, arrays lists, strings, booleans and nulls map directly."""
    table = table_from_records(
        [
            {"i": 1, "f": 1, "s": "x", "b": True, "v": [1, 2], "m": [[1.5], [2.5]], "n": None},
            {"i": 2, "f": 2.5, "s": "y", "b": False, "v": [3.5, 4], "m": [[3.5]], "n": None},
        ]
    )
    assert table.schema.types == [
        pa.int64(),
        pa.float64(),
        pa.string(),
        pa.bool_(),
        pa.list_(pa.float64()),
        pa.list_(pa.list_(pa.float64())),
        pa.null(),
    ]
    assert table.column("f").to_pylist() == [1.0, 2.5]


def test_records_missing_keys_are_nulls() -> None:
    """Keys missing from some objects become nulls; columns keep first-seen order."""
    table = table_from_records([{"a": 1}, {"b": "x"}, {"a": 3, "b": "z"}])
    assert table.column_names == ["a", "b"]
    assert table.to_pylist() == [{"a": 1, "b": None}, {"a": None, "b": "x"}, {"a": 3, "b": "z"}]


def test_records_float_rows_after_int_rows_make_floats() -> None:
    """A float anywhere in a column, also after integer rows, makes the column float64."""
    table = table_from_records([{"v": [1, 2]}, {"v": [0.5, 3]}, {"x": 1}])
    assert table.column("v").type == pa.list_(pa.float64())
    assert table.column("v").to_pylist() == [[1.0, 2.0], [0.5, 3.0], None]


def test_records_encode_is_what_pandas_writes() -> None:
    """Encoded records are a list of objects in column order, timestamps as epoch ms."""
    table = pa.table(
        {
            "time": pa.array([1_700_000_000_123], pa.timestamp("ms", "UTC")),
            "v": pa.array([[0.1, 0.2]], pa.list_(pa.float32())),
            "s": ["x"],
        }
    )
    assert encode(table, Format.PANDAS_RECORDS) == (
        b'[{"time":1700000000123,"v":[0.1,0.2],"s":"x"}]'
    )


def test_records_timestamps_of_any_unit_are_epoch_ms() -> None:
    """Nanosecond and second timestamps are written as epoch milliseconds too."""
    table = pa.table(
        {
            "ns": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns", "UTC")),
            "s": pa.array([[1_700_000_000]], pa.list_(pa.timestamp("s"))),
        }
    )
    assert orjson.loads(encode(table, Format.PANDAS_RECORDS)) == [
        {"ns": 1_700_000_000_123, "s": [1_700_000_000_000]}
    ]


def test_records_float32_round_trips_exactly() -> None:
    """float32 values written as JSON read back as float64 that cast to the same float32."""
    bits = np.random.default_rng(7).integers(0, 2**32, size=20_000, dtype=np.uint64)
    values = bits.astype(np.uint32).view(np.float32)
    values = values[np.isfinite(values)]
    table = pa.table({"x": pa.array([values], pa.list_(pa.float32()))})
    decoded = decode(encode(table, Format.PANDAS_RECORDS)).table
    assert decoded is not None
    back = decoded.column("x").cast(pa.list_(pa.float32())).combine_chunks().flatten()
    assert np.array_equal(back.to_numpy().view(np.uint32), values.view(np.uint32))


def test_records_ragged_lists_are_written() -> None:
    """List columns whose rows differ in length are written as they are."""
    table = pa.table({"v": pa.array([[1.5], [2.5, 3.5], None], pa.list_(pa.float32()))})
    assert orjson.loads(encode(table, Format.PANDAS_RECORDS)) == [
        {"v": [1.5]},
        {"v": [2.5, 3.5]},
        {"v": None},
    ]


def test_records_unencodable_column_is_named() -> None:
    """A column JSON cannot carry is an OutputError that names it."""
    table = pa.table({"ok": [1], "blob": pa.array([b"\x00"], pa.binary())})
    with pytest.raises(OutputError, match="column 'blob'"):
        encode(table, Format.PANDAS_RECORDS)


@pytest.mark.parametrize("depth", [63, 64, 65, 200])
def test_records_lists_nested_deeper_than_numpy_allows_are_written(depth: int) -> None:
    """A column of lists nested past numpy's 64 dimensions is written as JSON all the same."""
    value: JsonValue = 1.5
    for _ in range(depth):
        value = [value]
    table = table_from_records([{"id": value}, {"id": value}])
    assert orjson.loads(encode(table, Format.PANDAS_RECORDS)) == [{"id": value}, {"id": value}]


# --- OIP ------------------------------------------------------------------------------------


def _oip(*inputs: dict[str, object], **fields: object) -> bytes:
    return orjson.dumps({**fields, "inputs": list(inputs)})


def test_oip_request_carries_id_and_parameters() -> None:
    """An OIP request's id and parameters reach the Request."""
    payload = _oip(
        {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
        id="req-1",
        parameters={"threshold": 0.5},
    )
    request = decode(payload)
    assert request.format is Format.OIP
    assert request.oip_id == "req-1"
    assert dict(request.parameters) == {"threshold": 0.5}
    assert request.table is not None
    assert request.table.schema.types == [pa.list_(pa.float32())]


@pytest.mark.parametrize(
    "data",
    [[1, 2, 3, 4, 5, 6, 7, 8], [[1, 2, 3, 4], [5, 6, 7, 8]], [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]],
)
def test_oip_data_may_be_flat_or_nested(data: list[object]) -> None:
    """Flat row-major and nested data describe the same [2, 2, 2] tensor."""
    request = decode(_oip({"name": "m", "shape": [2, 2, 2], "datatype": "INT32", "data": data}))
    assert request.table is not None
    assert request.table.column("m").type == pa.list_(pa.list_(pa.int32()))
    assert request.table.to_pylist() == [{"m": [[1, 2], [3, 4]]}, {"m": [[5, 6], [7, 8]]}]


@pytest.mark.parametrize(
    ("datatype", "data", "arrow_type"),
    [
        ("BOOL", [True, False], pa.bool_()),
        ("UINT8", [1, 255], pa.uint8()),
        ("UINT16", [1, 2], pa.uint16()),
        ("UINT32", [1, 2], pa.uint32()),
        ("UINT64", [1, 2**64 - 1], pa.uint64()),
        ("INT8", [-128, 127], pa.int8()),
        ("INT16", [1, 2], pa.int16()),
        ("INT32", [1, 2], pa.int32()),
        ("INT64", [1, -(2**63)], pa.int64()),
        ("FP16", [0.5, 1], pa.float16()),
        ("FP32", [0.5, 1], pa.float32()),
        ("FP64", [0.5, 1], pa.float64()),
        ("BYTES", ["a", "b"], pa.string()),
    ],
)
def test_oip_datatypes_map_to_arrow(
    datatype: str, data: list[object], arrow_type: pa.DataType
) -> None:
    """Every OIP datatype becomes its Arrow type with the values unchanged."""
    request = decode(_oip({"name": "x", "shape": [2], "datatype": datatype, "data": data}))
    assert request.table is not None
    assert request.table.column("x").type == arrow_type
    assert request.table.column("x").to_pylist() == data


def test_oip_response_layout() -> None:
    """An OIP response names the model, echoes the id and lists one flat tensor per column."""
    table = pa.table(
        {
            "out": pa.array([[[1.5] * 2] * 2], pa.list_(pa.list_(pa.float32()))),
            "label": ["x"],
            "time": pa.array([1_700_000_000_123], pa.timestamp("ms", "UTC")),
        }
    )
    response = orjson.loads(
        encode(table, Format.OIP, oip_id="req-1", model_name="ccfraud", model_version="v2")
    )
    assert response == {
        "model_name": "ccfraud",
        "model_version": "v2",
        "id": "req-1",
        "parameters": {},
        "outputs": [
            {"name": "out", "shape": [1, 2, 2], "datatype": "FP32", "data": [1.5, 1.5, 1.5, 1.5]},
            {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            {
                "name": "time",
                "shape": [1],
                "datatype": "INT64",
                "parameters": {"timestamp_unit": "ms", "timezone": "UTC"},
                "data": [1_700_000_000_123],
            },
        ],
    }


def test_oip_request_layout() -> None:
    """encode_request writes an OIP v2 request with id, parameters and inputs."""
    table = pa.table({"x": pa.array([[1, 2]], pa.list_(pa.int64()))})
    request = orjson.loads(encode_request(table, Format.OIP, oip_id="a", parameters={"k": 1}))
    assert request == {
        "id": "a",
        "parameters": {"k": 1},
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}],
    }


def test_oip_response_without_id_omits_it() -> None:
    """A response to a request that had no id carries no id."""
    response = orjson.loads(encode(pa.table({"x": [1]}), Format.OIP))
    assert "id" not in response
    assert response["outputs"] == [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]


@pytest.mark.parametrize("fmt", [Format.OIP, Format.PANDAS_RECORDS])
def test_fixed_size_and_large_lists_encode_like_lists(fmt: Format) -> None:
    """Fixed-size and large list columns are written as plain arrays of their values."""
    table = pa.table(
        {
            "fixed": pa.array([[1.5, 2.5], [3.5, 4.5]], pa.list_(pa.float32(), 2)),
            "large": pa.array([[1], [2]], pa.large_list(pa.int64())),
        }
    )
    decoded = decode_response(encode(table.slice(1), fmt), fmt)
    assert isinstance(decoded, pa.Table)
    assert decoded.to_pylist() == [{"fixed": [3.5, 4.5], "large": [2]}]


def test_oip_ragged_list_column_is_an_output_error() -> None:
    """A list column whose rows differ in length has no OIP shape: OutputError names it."""
    table = pa.table({"ok": [1, 2], "ragged": pa.array([[1.0], [1.0, 2.0]])})
    with pytest.raises(OutputError, match=r"column 'ragged'.*different lengths \(1 to 2\)"):
        encode(table, Format.OIP)


def test_oip_null_lists_are_an_output_error() -> None:
    """A null list has no OIP shape: OutputError names the column."""
    table = pa.table({"v": pa.array([[1.0], None])})
    with pytest.raises(OutputError, match=r"column 'v'.*null"):
        encode(table, Format.OIP)


def test_oip_unsupported_column_type_is_an_output_error() -> None:
    """A column type OIP has no datatype for is an OutputError naming column and type."""
    table = pa.table({"s": pa.array([{"a": 1}])})
    with pytest.raises(OutputError, match=r"column 's' has type struct<a: int64>"):
        encode(table, Format.OIP)


# --- decode errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", [None, "application/json", CONTENT_TYPES[Format.ARROW_FILE]]
)
def test_empty_payload(content_type: str | None) -> None:
    """An empty payload is a DecodeError whatever the content type."""
    with pytest.raises(DecodeError, match="payload is empty"):
        decode(b"", content_type)


def test_garbage_bytes_without_content_type() -> None:
    """Bytes that are neither Arrow nor JSON say so and suggest a content type."""
    with pytest.raises(DecodeError, match=r"neither Arrow IPC.*nor JSON.*content-type"):
        decode(b"\x00\x01\x02garbage")


def test_garbage_bytes_as_arrow() -> None:
    """Bytes labelled Arrow that are not Arrow are a DecodeError naming the format."""
    with pytest.raises(DecodeError, match="truncated or corrupt Arrow IPC stream"):
        decode(b"not arrow at all", CONTENT_TYPES[Format.ARROW_STREAM])


def _stream_of(schema: pa.Schema, batches: list[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize(
    "table",
    [
        _sample(5),
        pa.table({"d": pa.array(["x", "y", "x"]).dictionary_encode(), "n": [1, 2, 3]}),
        pa.table({"n": pa.array([], pa.int64())}),
    ],
    ids=["plain", "dictionary", "no batch"],
)
def test_an_arrow_stream_decodes_to_what_it_holds_in_any_number_of_batches(
    table: pa.Table,
) -> None:
    """Every batch of a stream, dictionaries too, in order; a stream of no batch is no row."""
    batches = table.to_batches(max_chunksize=2) if table.num_rows else []
    payload = _stream_of(table.schema, batches)
    if not table.num_rows:
        with pytest.raises(DecodeError, match="at least one row"):
            decode(payload, CONTENT_TYPES[Format.ARROW_STREAM])
        return
    decoded = decode(payload, CONTENT_TYPES[Format.ARROW_STREAM]).table
    assert decoded is not None and decoded.num_rows == table.num_rows
    assert decoded.equals(table)


@pytest.mark.parametrize("cut", [4, 40, -20])
def test_truncated_arrow_stream(cut: int) -> None:
    """A cut-off Arrow stream is a DecodeError, sniffed or labelled."""
    payload = _arrow_stream(_sample())[:cut]
    with pytest.raises(DecodeError, match="truncated or corrupt Arrow IPC stream"):
        decode(payload)
    with pytest.raises(DecodeError, match="truncated or corrupt Arrow IPC stream"):
        decode(payload, CONTENT_TYPES[Format.ARROW_STREAM])


@pytest.mark.parametrize("cut", [8, 100, -1])
def test_truncated_arrow_file(cut: int) -> None:
    """A cut-off Arrow file is a DecodeError."""
    payload = encode_request(_sample(), Format.ARROW_FILE)[:cut]
    with pytest.raises(DecodeError, match="truncated or corrupt Arrow IPC file"):
        decode(payload)


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (encode_request(_sample().slice(0, 0), Format.ARROW_STREAM), None),
        (encode_request(_sample().slice(0, 0), Format.ARROW_FILE), None),
        (b"[]", None),
        (_oip({"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}), None),
    ],
)
def test_zero_rows(payload: bytes, content_type: str | None) -> None:
    """A request with no rows is a DecodeError in every format."""
    with pytest.raises(DecodeError, match="a request needs at least one row"):
        decode(payload, content_type)


def test_invalid_json_names_the_byte() -> None:
    """Malformed JSON says at which byte it breaks."""
    with pytest.raises(DecodeError, match="not valid JSON at byte 9"):
        decode(b'[{"a": 1,, }]', CONTENT_TYPES[Format.PANDAS_RECORDS])


def test_invalid_json_counts_bytes_not_characters() -> None:
    """The position of a JSON error counts bytes, also after multi-byte characters."""
    with pytest.raises(DecodeError, match="not valid JSON at byte 10"):
        decode('[{"é": 1,, }]'.encode(), "application/json")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"42", "pandas-records JSON must be an object or a list of objects; got a number"),
        (
            b"[1, 2]",
            "pandas-records JSON must be an object or a list of objects; item 0 is a number",
        ),
        (
            b'[{"a": 1}, "b"]',
            "pandas-records JSON must be an object or a list of objects; item 1 is a string",
        ),
        (b'"text"', "got a string"),
        (b"[{}]", "a request needs at least one column"),
    ],
)
def test_json_of_the_wrong_shape(payload: bytes, message: str) -> None:
    """JSON that is not a list of objects says what it found, and where."""
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_records_column_of_mixed_types_is_named() -> None:
    """A pandas-records key with values of different JSON types names the column."""
    with pytest.raises(DecodeError, match="pandas-records column 'a' cannot be read"):
        decode(b'[{"a": 1}, {"a": "x"}]')


def test_records_integer_too_large_is_a_decode_error() -> None:
    """An integer beyond int64 is a DecodeError, not a crash."""
    with pytest.raises(DecodeError, match="column 'a'"):
        decode(b'[{"a": 9223372036854775808}]')


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}],
            r"OIP input 'x': shape \[2, 3\] needs 6 values, got 5",
        ),
        (
            [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}],
            "OIP input 'x': unsupported datatype 'FP8'; use one of BOOL, UINT8",
        ),
        (
            [
                {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                {"name": "b", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
            ],
            r"disagree on the row count \(shape\[0\]\): 'a' has 2, 'b' has 3",
        ),
        (
            [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}],
            "OIP input 'x': 'data' is ragged",
        ),
        (
            [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1.5, 2]}],
            "OIP input 'x': datatype INT32 needs integers, got 1.5",
        ),
        (
            [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}],
            "OIP input 'x': data does not fit datatype UINT8",
        ),
        (
            [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}],
            "OIP input 'x': datatype BOOL needs booleans, got 1",
        ),
        (
            [{"name": "x", "shape": [-1], "datatype": "BOOL", "data": [True]}],
            "OIP input 'x': 'shape' must be a list of sizes >= 0",
        ),
        (
            [
                {"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]},
                {"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]},
            ],
            "OIP input 'x' appears twice",
        ),
        ([{"shape": [1], "datatype": "BOOL", "data": [True]}], "OIP input 0 needs a string 'name'"),
        ([], "needs at least one input tensor"),
        (
            [{"name": "x", "shape": [1, 0, 4_294_967_296], "datatype": "FP32", "data": []}],
            r"OIP input 'x': shape \[1, 0, 4294967296\] does not fit a list column",
        ),
        (
            [{"name": "x", "shape": [1], "datatype": "FP16", "data": [1e300]}],
            "OIP input 'x': data does not fit datatype FP16: overflow",
        ),
    ],
)
def test_oip_request_errors(inputs: list[dict[str, object]], message: str) -> None:
    """Each malformed OIP request is a DecodeError naming the input and what is wrong."""
    with pytest.raises(DecodeError, match=message):
        decode(orjson.dumps({"inputs": inputs}), CONTENT_TYPES[Format.OIP])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"outputs": []}', "an OIP request must be an object with an 'inputs' list"),
        (b"[1]", "an OIP request must be an object with an 'inputs' list; got an array"),
        (
            orjson.dumps(
                {
                    "id": 7,
                    "inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]}],
                }
            ),
            "OIP request 'id' must be a string; got a number",
        ),
    ],
)
def test_oip_document_errors(payload: bytes, message: str) -> None:
    """An OIP payload that is not a request object says what it is missing."""
    with pytest.raises(DecodeError, match=message):
        decode(payload, CONTENT_TYPES[Format.OIP])


# --- hostile payloads and the decoded-size bound ---------------------------------------------

_BOUND = Limits(max_rows=1_000, max_bytes=1_000_000)


def _zeros(rows: int, width: int = 29) -> pa.Table:
    """``rows`` rows of a ``width``-float tensor of zeros: compresses to almost nothing."""
    values = pa.array(np.zeros(rows * width, np.float32))
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.table({"tensor": pa.ListArray.from_arrays(offsets, values)})


def _arrow(table: pa.Table, fmt: Format, compression: str | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if fmt is Format.ARROW_FILE else pa.ipc.new_stream
    with opener(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=300)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE])
def test_arrow_column_names_must_be_unique(fmt: Format) -> None:
    """An Arrow request with two columns of one name is a SchemaError naming that column."""
    tensor = pa.array([[0.5] * 29], pa.list_(pa.float32()))
    table = pa.Table.from_arrays([tensor, pa.array([1]), pa.array([2])], ["tensor", "id", "id"])
    with pytest.raises(SchemaError, match=r"column 'id' appears 2 times .*tensor, id, id"):
        decode(encode_request(table, fmt))


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE])
def test_a_compressed_arrow_body_is_bounded_by_its_decoded_size(
    fmt: Format, compression: str
) -> None:
    """A small compressed payload that inflates past the bound is TooLarge, naming the key."""
    table = _zeros(900)  # 900 x 29 floats: 104,400 bytes of values, a few hundred compressed
    payload = _arrow(table, fmt, compression)
    assert len(payload) < 10_000
    with pytest.raises(TooLarge) as refused:
        decode(payload, limits=Limits(max_bytes=100_000))
    assert "over the limit of 100000 bytes (processing.max_decoded_bytes)" in refused.value.message
    assert f"Arrow IPC {fmt.value.removeprefix('arrow-')} decodes to" in refused.value.message
    assert decode(payload, limits=Limits(max_bytes=2 * table.nbytes)).table == table


@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE])
def test_an_arrow_request_is_bounded_by_its_rows(fmt: Format) -> None:
    """More rows than ``max_rows`` is TooLarge naming the rows and processing.max_request_rows."""
    payload = _arrow(_zeros(1_001, width=1), fmt)
    with pytest.raises(TooLarge, match=r"1001 rows, over the limit of 1000 rows \(processing"):
        decode(payload, limits=_BOUND)
    assert decode(_arrow(_zeros(1_000, width=1), fmt), limits=_BOUND).table is not None


def test_an_arrow_batch_that_claims_billions_of_rows_is_too_large() -> None:
    """A record batch whose metadata says 2**40 rows of nulls is refused before it is read."""
    payload = bytearray(_arrow(pa.table({"x": pa.nulls(3)}), Format.ARROW_STREAM))
    three = (3).to_bytes(8, "little")
    for _ in range(2):  # the batch's length, then its one field node's length
        at = payload.index(three, payload.index(b"\xff\xff\xff\xff", 8))
        payload[at : at + 8] = (2**40).to_bytes(8, "little")
    with pytest.raises(TooLarge, match="1099511627776 rows"):
        decode(bytes(payload), limits=_BOUND)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xff\xff\xff\x00\x00\x00\x00", "schema message"),
        (b"ARROW1\x00\x00" + b"\x00" * 8 + b"\xff\xff\xff\x7fARROW1", "a footer of"),
    ],
    ids=["stream-without-schema", "file-footer-past-its-start"],
)
def test_corrupt_arrow_metadata_is_a_decode_error(payload: bytes, message: str) -> None:
    """Arrow framing that points nowhere is a DecodeError saying so, never another exception."""
    with pytest.raises(DecodeError, match=message):
        decode(payload)


def test_an_arrow_column_name_that_is_not_utf8_is_a_decode_error() -> None:
    """A column name of undecodable bytes is a DecodeError that says so."""
    payload = bytearray(encode_request(pa.table({"abcd": [1.0]}), Format.ARROW_STREAM))
    payload[payload.index(b"abcd")] = 0xFF
    with pytest.raises(DecodeError, match="column name that is not UTF-8"):
        decode(bytes(payload))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([3_000_000_000, 0], "has 3000000000 rows, over the limit of 1000 rows"),
        ([1, 1_000_000, 0], "decodes to 4000012 bytes, over the limit of 1000000 bytes"),
        ([10, 100, 1000], "decodes to 4004048 bytes, over the limit of 1000000 bytes"),
    ],
)
def test_an_oip_shape_is_bounded_before_anything_is_allocated(
    shape: list[int], message: str
) -> None:
    """An OIP shape asking for too many rows or bytes is TooLarge naming the shape and bound."""
    payload = _oip({"name": "x", "shape": shape, "datatype": "FP32", "data": []})
    with pytest.raises(TooLarge, match=message) as refused:
        decode(payload, CONTENT_TYPES[Format.OIP], limits=_BOUND)
    assert f"OIP input 'x' of shape {shape}" in refused.value.message


def test_pandas_records_are_bounded_by_their_rows() -> None:
    """More JSON rows than the bound is TooLarge, parsed or decoded, sniffed or labelled."""
    payload = orjson.dumps([{"a": 1}] * 1_001)
    for parse in (
        lambda: parse_records(payload, _BOUND),
        lambda: decode(payload, limits=_BOUND),
        lambda: decode(payload, CONTENT_TYPES[Format.PANDAS_RECORDS], limits=_BOUND),
    ):
        with pytest.raises(TooLarge, match="pandas-records request has 1001 rows"):
            parse()
    assert len(parse_records(orjson.dumps([{"a": 1}] * 1_000), _BOUND)) == 1_000


# --- encode errors --------------------------------------------------------------------------


def test_encoding_a_table_as_custom_json_is_an_output_error() -> None:
    """A table cannot be a custom-json result; the error points at encode_value."""
    with pytest.raises(OutputError, match="encode_value"):
        encode(_sample(), Format.CUSTOM)


def test_unencodable_custom_value_is_an_output_error() -> None:
    """A custom result JSON cannot express is an OutputError."""
    with pytest.raises(OutputError, match="custom JSON result cannot be encoded"):
        encode_value({"x": object()})  # type: ignore[dict-item]


# --- pandas ---------------------------------------------------------------------------------


def test_dataframe_numpy_cells_become_list_columns() -> None:
    """1-D and 8x8 numpy cells become list and nested list columns; the index is dropped."""
    frame = pd.DataFrame(
        {
            "tensor": [np.arange(3, dtype=np.float32) + i for i in range(2)],
            "image": [np.full((8, 8), i, dtype=np.float32) for i in range(2)],
            "id": ["a", "b"],
        },
        index=pd.Index([10, 20], name="key"),
    )
    table = table_from_pandas(frame)
    assert table.column_names == ["tensor", "image", "id"]
    assert table.schema.types == [pa.list_(pa.float32()), FLOAT_MATRIX, pa.string()]
    assert table.column("image").to_pylist()[1] == [[1.0] * 8] * 8


def test_dataframe_ragged_numpy_cells() -> None:
    """Numpy cells of different shapes still convert, as lists of their own lengths."""
    frame = pd.DataFrame({"v": [np.ones((2, 2)), np.ones((1, 3))]})
    assert table_from_pandas(frame).column("v").to_pylist() == [[[1.0, 1.0]] * 2, [[1.0] * 3]]


def test_table_to_pandas_gives_numpy_cells_and_utc_times() -> None:
    """List cells come back as numpy arrays (8x8 for nested lists) and times stay UTC."""
    frame = table_to_pandas(_sample(2))
    assert isinstance(frame["tensor"].iloc[0], np.ndarray)
    assert frame["tensor"].iloc[0].shape == (29,)
    assert frame["image"].iloc[1].shape == (8, 8)
    assert str(frame["time"].dt.tz) == "UTC"
    assert list(frame.columns) == _sample(2).column_names


def test_table_to_pandas_ragged_nested_lists_are_python_lists() -> None:
    """Nested lists whose rows differ in shape come back as Python lists."""
    table = pa.table({"m": pa.array([[[1.0]], [[1.0, 2.0]]])})
    assert table_to_pandas(table)["m"].tolist() == [[[1.0]], [[1.0, 2.0]]]


def test_dataframe_round_trip() -> None:
    """table -> DataFrame -> table keeps every value and type."""
    table = _sample(3)
    assert table_from_pandas(table_to_pandas(table)).equals(table)


# --- micro-batches --------------------------------------------------------------------------


def _each_slice(
    table: pa.Table, fmt: Format, row_counts: list[int], oip_ids: list[str | None]
) -> list[bytes]:
    starts = np.cumsum([0, *row_counts])
    return [
        encode(table.slice(start, count), fmt, oip_id=oip_id, model_name="m", model_version="2")
        for start, count, oip_id in zip(starts, row_counts, oip_ids, strict=False)
    ]


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_encode_many_equals_encode_of_each_slice(fmt: Format) -> None:
    """Each payload of a micro-batch is byte for byte what encode gives for that request's rows."""
    table = _sample(7)
    chunked = pa.concat_tables([table.slice(0, 2), table.slice(2, 5)])
    counts, ids = [1, 3, 2, 1], ["a", None, "c", "d"]
    payloads = encode_many(chunked, fmt, counts, oip_ids=ids, model_name="m", model_version="2")
    assert payloads == _each_slice(chunked, fmt, counts, ids)
    if fmt is Format.OIP:
        assert [orjson.loads(payload).get("id") for payload in payloads] == ids


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_encode_many_writes_each_request_as_its_rows_alone_would(fmt: Format) -> None:
    """Ragged lists, nulls, dictionaries and empty requests encode as each request alone would."""
    table = pa.table(
        {
            "v": pa.array([[0.1], [0.2], [0.3, 0.4], [0.5, 0.6], [0.7]], pa.list_(pa.float32())),
            "n": pa.array([1, 2, None, 4, 5], pa.int64()),
            "f": pa.array([0.5, None, 1.5, 2.5, 3.5], pa.float32()),
            "d": pa.array(["x", "y", "x", "z", "y"]).dictionary_encode(),
            "w": pa.array([[1, 2]] * 5, pa.list_(pa.int8())),
        }
    )
    counts, ids = [2, 0, 2, 1], ["a", "b", None, "d"]
    assert encode_many(table, fmt, counts, oip_ids=ids, model_name="m", model_version="2") == (
        _each_slice(table, fmt, counts, ids)
    )


@pytest.mark.parametrize("fmt", [Format.ARROW_STREAM, Format.ARROW_FILE])
@pytest.mark.parametrize(
    "table",
    [
        pa.concat_tables([_sample(5).slice(0, 2), _sample(5).slice(2, 3)]),
        pa.table({"d": pa.array(["x", "y", "x"]).dictionary_encode(), "n": [1, 2, 3]}),
        _sample(3).replace_schema_metadata({"origin": "test"}),
    ],
)
def test_encode_many_arrow_is_what_the_ipc_writer_writes(fmt: Format, table: pa.Table) -> None:
    """Each Arrow payload of a micro-batch is the bytes pyarrow's IPC writer gives its rows."""
    payloads = encode_many(table, fmt, [2, 0, table.num_rows - 2])
    expected = []
    for start, count in [(0, 2), (2, 0), (2, table.num_rows - 2)]:
        sink = pa.BufferOutputStream()
        opener = pa.ipc.new_file if fmt is Format.ARROW_FILE else pa.ipc.new_stream
        with opener(sink, table.schema) as writer:
            writer.write_table(table.slice(start, count))
        expected.append(sink.getvalue().to_pybytes())
    assert payloads == expected


def test_encode_many_names_a_column_it_cannot_encode() -> None:
    """A column one request cannot carry is an OutputError that names it."""
    table = pa.table({"v": pa.array([[1.5], [2.5], [3.5, 4.5]], pa.list_(pa.float32()))})
    with pytest.raises(OutputError, match="column 'v' cannot be an OIP tensor"):
        encode_many(table, Format.OIP, [1, 2])


def test_encode_many_checks_its_row_counts_and_ids() -> None:
    """Row counts that do not cover the table, or ids not one per request, are a ValueError."""
    with pytest.raises(ValueError, match="add up to the table's 3 rows"):
        encode_many(_sample(3), Format.PANDAS_RECORDS, [1, 1])
    with pytest.raises(ValueError, match="1 oip_ids for 2 requests"):
        encode_many(_sample(3), Format.OIP, [1, 2], oip_ids=["a"])


def test_table_from_requests_equals_table_from_records_of_all_rows() -> None:
    """A batch of requests is one table with the types their rows together would have."""
    requests = [
        parse_records(b'{"a": 1, "v": [1, 2]}'),
        parse_records(b'[{"a": 2.5, "v": [0.5, 3]}, {"b": "x"}]'),
        parse_records(b'[{"a": 3, "b": null, "v": [4, 5]}]'),
    ]
    table = table_from_requests(requests)
    everything: list[JsonValue] = [row for rows in requests for row in rows]
    assert table.equals(table_from_records(everything))
    assert table.schema.types == [pa.float64(), pa.list_(pa.float64()), pa.string()]
    assert table.to_pylist() == [
        {"a": 1.0, "v": [1.0, 2.0], "b": None},
        {"a": 2.5, "v": [0.5, 3.0], "b": None},
        {"a": None, "v": None, "b": "x"},
        {"a": 3.0, "v": [4.0, 5.0], "b": None},
    ]


def test_table_from_requests_of_one_row_requests_equals_their_decoded_tables() -> None:
    """One-row tensor requests batch into the rows decode gives each of them, in order."""
    payloads = [orjson.dumps([{"tensor": [float(i), 0.5 * i]}]) for i in range(5)]
    table = table_from_requests([parse_records(payload) for payload in payloads])
    decoded = [decode(payload).table for payload in payloads]
    assert table.equals(pa.concat_tables(t for t in decoded if t is not None))


def test_conflicting_requests_are_a_decode_error() -> None:
    """Requests whose column is a number in one and a string in another cannot batch."""
    with pytest.raises(DecodeError, match="pandas-records column 'a' cannot be read"):
        table_from_requests([parse_records(b'{"a": 1}'), parse_records(b'{"a": "x"}')])


@pytest.mark.parametrize(
    "payload",
    [b"", b"42", b'"text"', b"[1, 2]", b'[{"a": 1}, "b"]', b"[]", b"[{}]", b'[{"a": 1,, }]'],
)
def test_parse_records_errors_are_those_of_decode(payload: bytes) -> None:
    """parse_records rejects what decode rejects as pandas-records, with the same message."""
    with pytest.raises(DecodeError) as parsed:
        parse_records(payload)
    with pytest.raises(DecodeError) as decoded:
        decode(payload, CONTENT_TYPES[Format.PANDAS_RECORDS])
    assert parsed.value.message == decoded.value.message


def test_parse_records_gives_one_dict_per_row() -> None:
    """An object is one row and a list of objects one row each, as parsed."""
    assert parse_records(b'{"a": 1}') == [{"a": 1}]
    assert parse_records(b'[{"a": [1.5]}, {"b": "x"}]') == [{"a": [1.5]}, {"b": "x"}]


def test_records_signature_is_the_column_names_in_first_seen_order() -> None:
    """A request's signature is the columns its table gets: every key, first seen first."""
    assert records_signature([{"tensor": [1.5], "id": "a"}]) == ("tensor", "id")
    rows = parse_records(b'[{"b": 1}, {"a": 2, "b": 3}, {"c": 4}]')
    assert records_signature(rows) == ("b", "a", "c")
    assert records_signature(rows) == tuple(table_from_requests([rows]).column_names)


def test_request_is_frozen() -> None:
    """A decoded request cannot be changed in place, parameters included."""
    request = decode(
        _oip({"name": "x", "shape": [1], "datatype": "BOOL", "data": [True]}, parameters={"a": 1})
    )
    with pytest.raises(AttributeError):
        request.oip_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.parameters["a"] = 2  # type: ignore[index]
