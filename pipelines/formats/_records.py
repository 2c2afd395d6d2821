"""pandas-records JSON: ``[{"col": value, ...}, ...]``, what ``DataFrame.to_json(orient="records")``
writes.

Decoding transposes the objects into columns and lets Arrow infer each column's type: numbers are
int64, or float64 when any value in the column is a float; arrays become (nested) list columns;
strings, booleans and nulls map directly. Casting to the model's types happens later.

A micro-batch of small requests is parsed one request at a time (:func:`parse_records`, little more
than ``orjson.loads``) and turned into one table at once (:func:`table_from_requests`); results go
back the same way (:func:`records_payloads`), so Arrow's fixed cost per call is paid per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain, repeat
from operator import itemgetter
from typing import cast

import numpy as np
import orjson
import pyarrow as pa

from pipelines.errors import DecodeError, OutputError
from pipelines.formats._core import UNLIMITED, JsonValue, Limits, json_type_name, load_json
from pipelines.formats._tensors import (
    SHORT_FLOATS,
    epoch_ms,
    is_list,
    json_values,
    one_array,
    row_spans,
    uniform_shape,
)

__all__ = [
    "bounded_rows",
    "dumps",
    "parse_records",
    "records_json",
    "records_payloads",
    "records_signature",
    "records_table",
    "rows_table",
    "table_from_requests",
]

_PROMPT = "pandas-records JSON must be an object or a list of objects"
_FLOAT = pa.float64()
_FLOAT_LIST = pa.list_(_FLOAT)
_FLOAT_MATRIX = pa.list_(_FLOAT_LIST)
_ARRAY_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)
_MAX_DIMS = 64  # numpy's limit: deeper lists are written from Python lists

Rows = list[dict[str, JsonValue]]


def parse_records(payload: bytes, limits: Limits = UNLIMITED) -> Rows:
    """The rows of one pandas-records request, one dict per row, checked as ``decode`` checks them.

    An object is one row, a list of objects one row each. A :class:`DecodeError` says where the
    bytes stop being JSON, or what is not an object, or that there is no row or no column; a
    :class:`~pipelines.errors.TooLarge` that there are more rows than ``limits`` allow.
    """
    if not payload:
        raise DecodeError("payload is empty")
    return bounded_rows(load_json(payload), len(payload), limits)


def bounded_rows(doc: JsonValue, size: int, limits: Limits) -> Rows:
    """The rows of parsed pandas-records JSON of ``size`` bytes, within ``limits``.

    The rows' decoded bytes are bounded by the JSON's own size, so ``size`` stands for them.
    """
    rows = _rows(doc)
    limits.check("pandas-records request", len(rows), size)
    return rows


def records_signature(rows: Rows) -> tuple[str, ...]:
    """The column names the rows make: every key, in first-seen order.

    Requests with the same signature have the same columns, so they batch into one table.
    """
    if len(rows) == 1:
        return tuple(rows[0])
    return tuple(dict.fromkeys(chain.from_iterable(rows)))


def table_from_requests(requests: Sequence[Rows]) -> pa.Table:
    """The rows of all ``requests``, in order, as one table: ``table_from_records`` of them all.

    Column types follow all the rows together (an integer in one request and a float in another
    make float64; a key some requests lack is null there). A :class:`DecodeError` when they
    cannot form one table, e.g. a column is a number in one request and a string in another.
    """
    rows: list[JsonValue] = list(chain.from_iterable(requests))
    return records_table(rows)


def records_table(doc: JsonValue) -> pa.Table:
    """The table that pandas-records JSON describes; a :class:`DecodeError` if it is not one."""
    return rows_table(_rows(doc))


def rows_table(rows: Rows) -> pa.Table:
    """The table of checked rows (``parse_records``); a :class:`DecodeError` names a bad column."""
    names = list(rows[0])
    if all(map(rows[0].keys().__eq__, map(dict.keys, rows))):
        columns = _transpose(rows, names)
    else:
        names = list(dict.fromkeys(chain.from_iterable(rows)))
        columns = [[row.get(name) for row in rows] for name in names]
    arrays = [_column(name, values) for name, values in zip(names, columns, strict=True)]
    return pa.Table.from_arrays(arrays, names=names)


def _rows(doc: JsonValue) -> Rows:
    if isinstance(doc, dict):
        rows: Rows = [doc]
    elif isinstance(doc, list):
        rows = _objects(doc)
    else:
        raise DecodeError(f"{_PROMPT}; got {json_type_name(doc)}")
    if not rows:
        raise DecodeError("a request needs at least one row")
    if not rows[0]:
        raise DecodeError("a request needs at least one column; the first object has no keys")
    return rows


def _objects(doc: list[JsonValue]) -> Rows:
    if len(doc) == 1 and isinstance(doc[0], dict):  # one row: most requests, checked cheaper
        return cast(Rows, doc)
    if not all(map(isinstance, doc, repeat(dict))):
        index, item = next((i, item) for i, item in enumerate(doc) if not isinstance(item, dict))
        raise DecodeError(f"{_PROMPT}; item {index} is {json_type_name(item)}")
    return cast(Rows, doc)


def _transpose(rows: Rows, names: list[str]) -> list[list[JsonValue]]:
    """Columns of rows that all have the same keys, without a Python-level loop per row."""
    if len(names) == 1:
        return [list(map(itemgetter(names[0]), rows))]
    return [list(column) for column in zip(*map(itemgetter(*names), rows), strict=True)]


def _column(name: str, values: list[JsonValue]) -> pa.Array:
    guess = _guess_type(values[0])
    if guess is not None:
        try:
            return pa.array(values, type=guess)
        except _ARRAY_ERRORS:
            pass  # a later row disagrees with the first: let Arrow infer from all of them
    try:
        return pa.array(values)
    except _ARRAY_ERRORS as exc:
        raise DecodeError(
            f"pandas-records column {name!r} cannot be read: {exc}; "
            "every value of a column needs the same JSON type and nesting"
        ) from exc


def _guess_type(value: JsonValue) -> pa.DataType | None:
    """float64 for floats (and arrays of them), which infer slowest; ``None`` to infer."""
    if type(value) is float:
        return _FLOAT
    if type(value) is list and value:
        if type(value[0]) is float:
            return _FLOAT_LIST
        inner = value[0]
        if type(inner) is list and inner and type(inner[0]) is float:
            return _FLOAT_MATRIX
    return None


def records_json(table: pa.Table) -> bytes:
    """A list of one object per row, keys in column order; timestamps as epoch milliseconds."""
    return records_payloads(table, [table.num_rows])[0]


def records_payloads(table: pa.Table, row_counts: Sequence[int]) -> list[bytes]:
    """``records_json`` of each request's rows: request i is the next ``row_counts[i]`` rows.

    The table becomes JSON-ready rows once; each request's slice of them is one ``orjson`` call.
    """
    names = table.schema.names
    cells = [_column_cells(one_array(column), row_counts) for column in table.columns]
    rows = list(map(dict, map(zip, repeat(names), zip(*cells, strict=True))))
    try:
        return [
            orjson.dumps(rows[start : start + count], option=orjson.OPT_SERIALIZE_NUMPY)
            for start, count in row_spans(row_counts)
        ]
    except TypeError as exc:
        culprit = _unencodable(names, cells)
        raise OutputError(f"{culprit} cannot be encoded as JSON: {exc}") from exc


def _column_cells(array: pa.Array, row_counts: Sequence[int]) -> list[object]:
    """One JSON-ready value per row, written as each request's own rows alone would write them."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if not is_list(array.type):
        values = json_values(array)
        if isinstance(values, np.ndarray) and values.dtype in SHORT_FLOATS:
            return list(values)  # numpy scalars, which orjson prints shortest for their width
        return cast(list[object], values.tolist() if isinstance(values, np.ndarray) else values)
    shaped = uniform_shape(array)
    if isinstance(shaped, str) and len(row_counts) > 1:
        # a request's own rows may have one shape, which prints float32 shortest: look per request
        return [
            cell
            for start, count in row_spans(row_counts)
            for cell in _column_cells(array.slice(start, count), [count])
        ]
    if not isinstance(shaped, str):
        leaf, dims = shaped
        values = json_values(leaf)
        if isinstance(values, np.ndarray) and values.dtype != np.object_ and len(dims) < _MAX_DIMS:
            return list(values.reshape(len(array), *dims))  # a numpy row prints float32 shortest
    return cast(list[object], epoch_ms(array).to_pylist())


def dumps(document: object, what: str = "result") -> bytes:
    """JSON bytes via orjson (numpy arrays included); an :class:`OutputError` if impossible."""
    try:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise OutputError(f"{what} cannot be encoded as JSON: {exc}") from exc


def _unencodable(names: list[str], cells: list[list[object]]) -> str:
    for name, values in zip(names, cells, strict=True):
        try:
            orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:
            return f"column {name!r}"
    return "result"
