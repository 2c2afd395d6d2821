"""Open Inference Protocol v2 JSON: requests ``{"id", "parameters", "inputs"}`` and responses
``{"model_name", "model_version", "id", "parameters", "outputs"}``.

Each tensor ``{"name", "shape", "datatype", "data"}`` is one column: ``shape[0]`` is the row
count, ``shape[1:]`` the per-row shape (a list column per extra dim), ``data`` flat row-major or
nested. Timestamps travel as INT64 epoch milliseconds marked with the tensor parameter
``{"timestamp_unit": "ms"}`` (plus ``"timezone"``), which turns them back into timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.errors import DecodeError, OutputError
from pipelines.formats._core import UNLIMITED, Format, JsonValue, Limits, Request, json_type_name
from pipelines.formats._tensors import (
    SHORT_FLOATS,
    json_values,
    nest,
    one_array,
    row_spans,
    uniform_shape,
)

__all__ = ["oip_request", "oip_response", "oip_table", "oip_tensor_sets", "oip_tensors"]

_ARROW_TYPES: Mapping[str, pa.DataType] = {
    "BOOL": pa.bool_(),
    "UINT8": pa.uint8(),
    "UINT16": pa.uint16(),
    "UINT32": pa.uint32(),
    "UINT64": pa.uint64(),
    "INT8": pa.int8(),
    "INT16": pa.int16(),
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "FP16": pa.float16(),
    "FP32": pa.float32(),
    "FP64": pa.float64(),
    "BYTES": pa.string(),
}
_DATATYPES = {arrow_type: datatype for datatype, arrow_type in _ARROW_TYPES.items()} | {
    pa.large_string(): "BYTES"
}
# bytes a value takes in memory; a string's offset (its characters are in the payload already)
_ITEM_BYTES: Mapping[str, int] = {
    datatype: 4 if datatype == "BYTES" else max(1, int(arrow_type.bit_width) // 8)
    for datatype, arrow_type in _ARROW_TYPES.items()
}
_MAX_LIST_VALUES = 2**31 - 1  # a list level's values are addressed by 32-bit offsets
# numpy kinds of JSON data that each datatype accepts, and how to say so
_KINDS = (
    {"BOOL": ("b", "booleans"), "BYTES": ("U", "strings")}
    | {datatype: ("iu", "integers") for datatype in _ARROW_TYPES if "INT" in datatype}
    | {datatype: ("iuf", "numbers") for datatype in _ARROW_TYPES if datatype.startswith("FP")}
)


def oip_request(doc: JsonValue, limits: Limits = UNLIMITED) -> Request:
    """The request an OIP v2 request document describes, its shapes checked against ``limits``
    before any tensor is built."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        got = json_type_name(doc) if not isinstance(doc, dict) else "an object without it"
        raise DecodeError(f"an OIP request must be an object with an 'inputs' list; got {got}")
    oip_id = doc.get("id")
    if oip_id is not None and not isinstance(oip_id, str):
        raise DecodeError(f"OIP request 'id' must be a string; got {json_type_name(oip_id)}")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        got = json_type_name(parameters)
        raise DecodeError(f"OIP request 'parameters' must be an object; got {got}")
    table = oip_table(cast(list[JsonValue], doc["inputs"]), "input", limits)
    return Request(Format.OIP, table=table, oip_id=oip_id, parameters=MappingProxyType(parameters))


def oip_table(tensors: list[JsonValue], role: str, limits: Limits = UNLIMITED) -> pa.Table:
    """One column per tensor; ``role`` ("input" or "output") names them in messages.

    Each tensor's shape is checked against ``limits`` (the bytes of the tensors so far
    included) before its column is built.
    """
    if not tensors:
        raise DecodeError(f"an OIP document needs at least one {role} tensor")
    columns: dict[str, pa.Array] = {}
    rows: dict[str, int] = {}
    nbytes = 0
    for index, tensor in enumerate(tensors):
        head = _head(tensor, index, role)
        nbytes += _decoded_bytes(head)
        limits.check(f"{head.where} of shape {head.shape}", head.shape[0], nbytes)
        _check_offsets(head)
        name, column = head.name, _column(cast(dict[str, JsonValue], tensor), head)
        if name in columns:
            raise DecodeError(f"OIP {role} {name!r} appears twice; names must be unique")
        columns[name], rows[name] = column, len(column)
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name!r} has {count}" for name, count in rows.items())
        raise DecodeError(f"OIP {role}s disagree on the row count (shape[0]): {counts}")
    if not next(iter(rows.values())):
        raise DecodeError("a request needs at least one row")
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


@dataclass(frozen=True, slots=True)
class _Head:
    """What a tensor says of itself before its data is read: name, shape and datatype."""

    name: str
    where: str
    shape: list[int]
    datatype: str


def _head(tensor: JsonValue, index: int, role: str) -> _Head:
    if not isinstance(tensor, dict):
        got = json_type_name(tensor)
        raise DecodeError(
            f"OIP {role} {index} must be an object with name, shape, datatype and data; got {got}"
        )
    name = tensor.get("name")
    if not isinstance(name, str):
        raise DecodeError(f"OIP {role} {index} needs a string 'name'")
    where = f"OIP {role} {name!r}"
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and shape and all(_is_size(size) for size in shape)):
        raise DecodeError(
            f"{where}: 'shape' must be a list of sizes >= 0, rows first; got {shape!r}"
        )
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in _ARROW_TYPES:
        accepted = ", ".join(_ARROW_TYPES)
        raise DecodeError(f"{where}: unsupported datatype {datatype!r}; use one of {accepted}")
    return _Head(name, where, cast(list[int], shape), datatype)


def _decoded_bytes(head: _Head) -> int:
    """The bytes the tensor's column takes: its values, and the offsets of each list level."""
    rows, dims = head.shape[0], head.shape[1:]
    offsets = sum(4 * (rows * math.prod(dims[:level]) + 1) for level in range(len(dims)))
    return math.prod(head.shape) * _ITEM_BYTES[head.datatype] + offsets


def _check_offsets(head: _Head) -> None:
    """Each list level of the column must be addressable by Arrow's 32-bit offsets."""
    rows, dims = head.shape[0], head.shape[1:]
    for level, dim in enumerate(dims):
        if max(dim, rows * math.prod(dims[: level + 1])) > _MAX_LIST_VALUES:
            raise DecodeError(
                f"{head.where}: shape {head.shape} does not fit a list column: dimension "
                f"{level + 1} ({dim}) needs more than {_MAX_LIST_VALUES} values in one list "
                "level (Arrow's 32-bit list offsets)"
            )


def _column(tensor: dict[str, JsonValue], head: _Head) -> pa.Array:
    where, datatype, sizes = head.where, head.datatype, head.shape
    data = tensor.get("data")
    if not isinstance(data, list):
        raise DecodeError(f"{where}: 'data' must be an array, flat row-major or nested")
    values = _values(data, datatype, where)
    if len(values) != math.prod(sizes):
        needed = math.prod(sizes)
        raise DecodeError(f"{where}: shape {sizes} needs {needed} values, got {len(values)}")
    parameters = tensor.get("parameters")
    if isinstance(parameters, dict) and parameters.get("timestamp_unit") and datatype == "INT64":
        values = _timestamps(values, parameters, where)
    return nest(values, sizes[0], sizes[1:])


def _is_size(size: JsonValue) -> bool:
    return type(size) is int and size >= 0


def _values(data: list[JsonValue], datatype: str, where: str) -> pa.Array:
    """The flat values of ``data``, checked against ``datatype`` (no silent truncation)."""
    arrow_type = _ARROW_TYPES[datatype]
    try:
        array: npt.NDArray[np.generic] = np.asarray(data)
    except ValueError as exc:
        raise DecodeError(f"{where}: 'data' is ragged; nested arrays must be regular") from exc
    kinds, wanted = _KINDS[datatype]
    if array.size == 0:
        return pa.array([], type=arrow_type)
    try:
        # nulls, or integers beyond int64 that numpy holds only as objects or floats
        if array.dtype.kind == "O" or (array.dtype.kind == "f" and kinds == "iu"):
            values = np.asarray(data, dtype=object).ravel().tolist()
            misfit = next((v for v in values if v is not None and not _fits(v, kinds)), None)
            if misfit is not None:
                raise DecodeError(f"{where}: datatype {datatype} needs {wanted}, got {misfit!r}")
            return pa.array(values, type=arrow_type)
        if array.dtype.kind not in kinds:
            got = array.ravel()[0].item()
            raise DecodeError(f"{where}: datatype {datatype} needs {wanted}, got {got!r}")
        if datatype.startswith("FP"):
            with np.errstate(over="raise"):  # 1e300 is no FP32: an error, not infinity
                array = array.astype(arrow_type.to_pandas_dtype())
        return pa.array(array.ravel(), type=arrow_type)
    except (pa.ArrowException, TypeError, ValueError, ArithmeticError) as exc:
        raise DecodeError(f"{where}: data does not fit datatype {datatype}: {exc}") from exc


def _fits(value: object, kinds: str) -> bool:
    """Whether a JSON value is of a numpy kind in ``kinds`` (bool is no integer here)."""
    match value:
        case bool():
            return "b" in kinds
        case int():
            return "i" in kinds
        case float():
            return "f" in kinds
        case str():
            return "U" in kinds
        case _:
            return False


def _timestamps(values: pa.Array, parameters: dict[str, JsonValue], where: str) -> pa.Array:
    unit, timezone = parameters.get("timestamp_unit"), parameters.get("timezone")
    if unit not in ("s", "ms", "us", "ns") or not isinstance(timezone, str | None):
        raise DecodeError(f"{where}: 'timestamp_unit' must be s, ms, us or ns; got {unit!r}")
    return values.cast(pa.timestamp(unit, timezone))


def oip_response(
    tensors: list[dict[str, object]], oip_id: str | None, model_name: str, model_version: str
) -> dict[str, object]:
    """An OIP v2 response document: the model, the request's id when it had one, the outputs."""
    response: dict[str, object] = {"model_name": model_name, "model_version": model_version}
    if oip_id is not None:
        response["id"] = oip_id
    response["parameters"] = {}
    response["outputs"] = tensors
    return response


def oip_tensors(table: pa.Table) -> list[dict[str, object]]:
    """One OIP tensor per column, data flat row-major; :class:`OutputError` where impossible."""
    return [
        _tensor(name, one_array(column))
        for name, column in zip(table.schema.names, table.columns, strict=True)
    ]


def oip_tensor_sets(table: pa.Table, row_counts: Sequence[int]) -> list[list[dict[str, object]]]:
    """``oip_tensors`` of each request's rows: request i is the next ``row_counts[i]`` rows.

    Each column's shape, datatype and flat values are found once; a request's tensor holds a
    slice of those values.
    """
    spans = row_spans(row_counts)
    columns = [
        _tensors(name, one_array(column), spans)
        for name, column in zip(table.schema.names, table.columns, strict=True)
    ]
    if not columns:
        return [[] for _ in row_counts]
    return [list(tensors) for tensors in zip(*columns, strict=True)]


def _tensor(name: str, array: pa.Array) -> dict[str, object]:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    shaped = uniform_shape(array)
    if isinstance(shaped, str):
        raise OutputError(
            f"column {name!r} cannot be an OIP tensor: {shaped}; "
            "OIP needs every row of a column to have the same shape"
        )
    leaf, dims = shaped
    head = _datatype(name, array.type, leaf.type)
    return {"name": name, "shape": [len(array), *dims], **head, "data": json_values(leaf)}


def _tensors(name: str, array: pa.Array, spans: list[tuple[int, int]]) -> list[dict[str, object]]:
    """Column ``name`` as one tensor per ``(start, count)`` span of rows, each what ``_tensor``
    gives for those rows alone."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    shaped = uniform_shape(array)
    if isinstance(shaped, str):  # a request's own rows may still have one shape
        return [_tensor(name, array.slice(start, count)) for start, count in spans]
    leaf, dims = shaped
    head = _datatype(name, array.type, leaf.type)
    template: dict[str, object] = {"name": name, "shape": None, **head, "data": None}
    values = json_values(leaf)
    if isinstance(values, np.ndarray) and values.dtype not in SHORT_FLOATS:
        values = values.tolist()  # prints the same, and a list slices and encodes faster
    width = math.prod(dims)
    tensors: list[dict[str, object]] = []
    for start, count in spans:
        if not count:  # no rows: the dims that no rows have
            tensors.append(_tensor(name, array.slice(start, 0)))
            continue
        tensor = template.copy()  # keys stay in the template's order
        tensor["shape"] = [count, *dims]
        tensor["data"] = values[start * width : (start + count) * width]
        tensors.append(tensor)
    return tensors


def _datatype(name: str, arrow_type: pa.DataType, leaf: pa.DataType) -> dict[str, object]:
    """The ``datatype`` (and, for timestamps, ``parameters``) of a tensor of ``leaf`` values."""
    if pa.types.is_timestamp(leaf):
        return {"datatype": "INT64", "parameters": {"timestamp_unit": "ms", "timezone": leaf.tz}}
    if leaf in _DATATYPES:
        return {"datatype": _DATATYPES[leaf]}
    raise OutputError(
        f"column {name!r} has type {arrow_type}, which OIP cannot express; "
        "OIP carries booleans, integers, floats, strings and timestamps, or lists of them"
    )
