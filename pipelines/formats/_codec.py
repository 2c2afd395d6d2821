"""Bytes to requests and tables to bytes, in every format of SPEC §3 and §4."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow as pa

from pipelines.errors import DecodeError, OutputError, SchemaError
from pipelines.formats._core import (
    UNLIMITED,
    Format,
    JsonValue,
    Limits,
    Request,
    load_json,
    parse_content_type,
)
from pipelines.formats._ipc import read_arrow
from pipelines.formats._oip import (
    oip_request,
    oip_response,
    oip_table,
    oip_tensor_sets,
    oip_tensors,
)
from pipelines.formats._records import (
    bounded_rows,
    dumps,
    parse_records,
    records_json,
    records_payloads,
    records_table,
    rows_table,
)
from pipelines.formats._tensors import row_spans

__all__ = [
    "decode",
    "decode_response",
    "encode",
    "encode_many",
    "encode_request",
    "encode_value",
    "table_from_records",
]

_ARROW_MAGIC = {b"ARROW1": Format.ARROW_FILE, b"\xff\xff\xff\xff": Format.ARROW_STREAM}
_STREAM_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # continuation marker, then length 0
_ARROW_NAMES = {Format.ARROW_STREAM: "stream", Format.ARROW_FILE: "file"}


def decode(
    payload: bytes,
    content_type: str | None = None,
    *,
    custom: bool = False,
    limits: Limits = UNLIMITED,
) -> Request:
    """The request in ``payload``: its format from ``content_type``, else sniffed.

    Without a content type, ``ARROW1`` starts an Arrow file and ``0xFFFFFFFF`` an Arrow stream;
    anything else is JSON: custom JSON when the pipeline takes it (``custom``), OIP when it is an
    object whose ``inputs`` is a list of objects, else pandas-records. Plain
    ``application/json`` is custom JSON for such a pipeline and pandas-records otherwise.
    A request that would decode to more than ``limits`` allows is
    :class:`~pipelines.errors.TooLarge` before its rows are allocated.
    """
    if not payload:
        raise DecodeError("payload is empty")
    fmt, plain_json = parse_content_type(content_type)
    if fmt is None:
        return _sniffed(payload, custom=custom, limits=limits)
    if fmt in _ARROW_NAMES:
        return _arrow_request(payload, fmt, limits)
    if fmt is Format.CUSTOM or (plain_json and custom):
        return Request(Format.CUSTOM, value=load_json(payload))
    if fmt is Format.OIP:
        return oip_request(load_json(payload), limits)
    return Request(Format.PANDAS_RECORDS, table=rows_table(parse_records(payload, limits)))


def _sniffed(payload: bytes, *, custom: bool, limits: Limits) -> Request:
    for magic, fmt in _ARROW_MAGIC.items():
        if payload.startswith(magic):
            return _arrow_request(payload, fmt, limits)
    try:
        doc = load_json(payload)
    except DecodeError as exc:
        raise DecodeError(
            f"payload is neither Arrow IPC (it starts with neither 'ARROW1' nor 0xFFFFFFFF) "
            f"nor JSON ({exc.message}); a content-type header names the format"
        ) from exc
    if custom:
        return Request(Format.CUSTOM, value=doc)
    if _looks_like_oip(doc):
        return oip_request(doc, limits)
    return Request(Format.PANDAS_RECORDS, table=rows_table(bounded_rows(doc, len(payload), limits)))


def _looks_like_oip(doc: JsonValue) -> bool:
    if not isinstance(doc, dict):
        return False
    inputs = doc.get("inputs")
    return isinstance(inputs, list) and (not inputs or isinstance(inputs[0], dict))


def _arrow_request(payload: bytes, fmt: Format, limits: Limits) -> Request:
    """An Arrow IPC request: at least one row, and each column name once."""
    table = read_arrow(payload, fmt, limits)
    if table.num_rows == 0:
        raise DecodeError("a request needs at least one row")
    repeated = [name for name, count in Counter(table.column_names).items() if count > 1]
    if repeated:
        columns = ", ".join(table.column_names)
        raise SchemaError(
            f"column {repeated[0]!r} appears {table.column_names.count(repeated[0])} times "
            f"in the request (columns: {columns}); each column name must be unique"
        )
    return Request(fmt, table=table)


def table_from_records(data: dict[str, JsonValue] | list[JsonValue]) -> pa.Table:
    """The table that parsed pandas-records JSON describes: an object is one row, a list N rows.

    Numbers become int64, or float64 when any value of the column is a float; arrays become
    (nested) list columns; strings, booleans and nulls map directly; a key missing from an
    object is a null. A :class:`DecodeError` says what does not fit.
    """
    return records_table(data)


def encode(
    table: pa.Table,
    fmt: Format,
    *,
    oip_id: str | None = None,
    model_name: str = "",
    model_version: str = "",
) -> bytes:
    """A result table as the bytes of ``fmt`` (OIP: a v2 *response*); custom JSON is no table.

    An :class:`OutputError` names a column the format cannot carry.
    """
    if fmt is Format.OIP:
        return dumps(oip_response(oip_tensors(table), oip_id, model_name, model_version))
    return _encode_table(table, fmt)


def encode_many(
    table: pa.Table,
    fmt: Format,
    row_counts: Sequence[int],
    *,
    oip_ids: Sequence[str | None] | None = None,
    model_name: str = "",
    model_version: str = "",
) -> list[bytes]:
    """One result payload per request of a micro-batch, each what ``encode`` gives for its rows.

    Request i is the next ``row_counts[i]`` rows of ``table`` and, for OIP, echoes
    ``oip_ids[i]``. JSON formats convert the table to JSON-ready values once, so a one-row
    request costs one ``orjson`` call; Arrow writes each request's slice. An
    :class:`OutputError` names a column the format cannot carry (in any of the requests).
    """
    _check_counts(table, row_counts, oip_ids)
    if fmt is Format.OIP:
        ids = [None] * len(row_counts) if oip_ids is None else oip_ids
        return [
            dumps(oip_response(tensors, oip_id, model_name, model_version))
            for tensors, oip_id in zip(oip_tensor_sets(table, row_counts), ids, strict=True)
        ]
    if fmt is Format.PANDAS_RECORDS:
        return records_payloads(table, row_counts)
    spans = row_spans(row_counts)
    if fmt is Format.ARROW_STREAM and not any(map(_has_dictionary, table.schema.types)):
        return _arrow_streams(table, spans)
    return [_encode_table(table.slice(start, count), fmt) for start, count in spans]


def _check_counts(
    table: pa.Table, row_counts: Sequence[int], oip_ids: Sequence[str | None] | None
) -> None:
    if any(count < 0 for count in row_counts) or sum(row_counts) != table.num_rows:
        raise ValueError(
            f"row_counts must be >= 0 and add up to the table's {table.num_rows} rows; "
            f"they add up to {sum(row_counts)}"
        )
    if oip_ids is not None and len(oip_ids) != len(row_counts):
        raise ValueError(f"{len(oip_ids)} oip_ids for {len(row_counts)} requests; give one each")


def _arrow_streams(table: pa.Table, spans: list[tuple[int, int]]) -> list[bytes]:
    """Arrow IPC streams of rows ``start`` to ``start + count`` of ``table``, schema written once.

    Without dictionaries a stream is the schema message, one message per record batch and the
    end-of-stream marker: the very bytes the stream writer writes.
    """
    try:
        schema = table.schema.serialize()
        return [
            b"".join([schema, *map(pa.RecordBatch.serialize, slice_.to_batches()), _STREAM_END])
            for slice_ in (table.slice(start, count) for start, count in spans)
        ]
    except pa.ArrowException as exc:
        raise OutputError(f"result cannot be written as Arrow IPC: {exc}") from exc


def _has_dictionary(arrow_type: pa.DataType) -> bool:
    """Whether a type is dictionary-encoded or holds one (its stream then has dictionaries)."""
    children = (arrow_type.field(index).type for index in range(arrow_type.num_fields))
    return pa.types.is_dictionary(arrow_type) or any(map(_has_dictionary, children))


def encode_request(
    table: pa.Table,
    fmt: Format,
    *,
    oip_id: str | None = None,
    parameters: Mapping[str, JsonValue] | None = None,
) -> bytes:
    """A table as a client sends it in ``fmt`` (OIP: a v2 *request*)."""
    if fmt is Format.OIP:
        request: dict[str, object] = {} if oip_id is None else {"id": oip_id}
        request["parameters"] = dict(parameters or {})
        request["inputs"] = oip_tensors(table)
        return dumps(request)
    return _encode_table(table, fmt)


def _encode_table(table: pa.Table, fmt: Format) -> bytes:
    if fmt is Format.PANDAS_RECORDS:
        return records_json(table)
    if fmt is Format.CUSTOM:
        raise OutputError(
            "a custom-json result must be a JSON value, not a table of "
            f"{table.num_rows} rows; encode it with encode_value"
        )
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if fmt is Format.ARROW_FILE else pa.ipc.new_stream
    try:
        with opener(sink, table.schema) as writer:
            writer.write_table(table)
    except pa.ArrowException as exc:
        raise OutputError(f"result cannot be written as Arrow IPC: {exc}") from exc
    return bytes(sink.getvalue().to_pybytes())


def encode_value(value: JsonValue) -> bytes:
    """Custom JSON: the last step's value as JSON bytes (numpy arrays and scalars allowed)."""
    return dumps(value, "custom JSON result")


def decode_response(payload: bytes, fmt: Format) -> pa.Table | JsonValue:
    """What a client receives, back as a table (custom JSON: the parsed value).

    pandas-records gives timestamps back as int64 epoch milliseconds and float32 as float64;
    cast to the expected schema to restore them. OIP restores every type it carries.
    """
    if not payload:
        raise DecodeError("payload is empty")
    if fmt in _ARROW_NAMES:
        return read_arrow(payload, fmt)
    doc = load_json(payload)
    if fmt is Format.CUSTOM:
        return doc
    if fmt is Format.OIP:
        outputs = doc.get("outputs") if isinstance(doc, dict) else None
        if not isinstance(outputs, list):
            raise DecodeError("an OIP response must be an object with an 'outputs' list")
        return oip_table(outputs, "output")
    return records_table(doc)
