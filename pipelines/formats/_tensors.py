"""Arrow list columns as row-major tensors, and Arrow values as JSON-ready values.

A column whose rows all hold the same shape, e.g. ``list<list<float32>>`` of 8x8 per row, is a
tensor ``[rows, 8, 8]``: its leaf values, flat and row-major, plus the per-row dims ``[8, 8]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipelines.formats._core import JsonValue
from pipelines.tensors import one_array

__all__ = [
    "SHORT_FLOATS",
    "epoch_ms",
    "is_list",
    "json_values",
    "nest",
    "one_array",
    "row_spans",
    "uniform_shape",
]

JsonLeaves = npt.NDArray[np.generic] | list[JsonValue]
"""Leaf values ready for ``orjson`` with ``OPT_SERIALIZE_NUMPY``."""


SHORT_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))
"""numpy dtypes that orjson prints shortest for their width, where a Python float would not."""

_LIST_TYPES = (pa.ListType, pa.LargeListType, pa.FixedSizeListType)
_FLOAT_IDS = frozenset(t.id for t in (pa.float16(), pa.float32(), pa.float64()))
_SIGNED = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
_UNSIGNED = (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_EXACT_IDS = frozenset(t.id for t in (pa.bool_(), *_SIGNED, *_UNSIGNED))


def is_list(arrow_type: pa.DataType) -> bool:
    """Whether a type is one of Arrow's list types (plain, large, fixed-size)."""
    return isinstance(arrow_type, _LIST_TYPES)


def row_spans(row_counts: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, count)`` of each request of a batch whose requests have ``row_counts`` rows."""
    ends = accumulate(row_counts)
    return [(end - count, count) for count, end in zip(row_counts, ends, strict=True)]


def nest(values: pa.Array, rows: int, dims: Sequence[int]) -> pa.Array:
    """Wrap flat row-major values in one list level per dim: ``[8, 8]`` gives ``list<list<T>>``."""
    for level in range(len(dims) - 1, -1, -1):
        lists = rows * math.prod(dims[:level])
        offsets = np.arange(lists + 1, dtype=np.int32) * np.int32(dims[level])
        values = pa.ListArray.from_arrays(pa.array(offsets), values)
    return values


def uniform_shape(array: pa.Array) -> tuple[pa.Array, list[int]] | str:
    """The flat leaf values and per-row dims of a column, or why its rows have no one shape."""
    dims: list[int] = []
    while is_list(array.type):
        if array.null_count:
            return f"{array.null_count} of its lists are null"
        if isinstance(array.type, pa.FixedSizeListType):
            size = array.type.list_size
            dims.append(size)
            array = array.values.slice(array.offset * size, len(array) * size)
            continue
        offsets = array.offsets.to_numpy()
        size = int(offsets[1] - offsets[0]) if len(array) else 0
        if len(array) > 1 and not (np.diff(offsets) == size).all():
            lengths = np.diff(offsets)
            return f"its lists have different lengths ({lengths.min()} to {lengths.max()})"
        dims.append(size)
        array = array.values.slice(int(offsets[0]), len(array) * size)
    return array, dims


def epoch_ms(array: pa.Array) -> pa.Array:
    """Timestamps, also inside lists, as int64 milliseconds since the epoch (pandas' JSON)."""
    leaf = array.type
    while is_list(leaf):
        leaf = leaf.value_type
    if not pa.types.is_timestamp(leaf):
        return array
    if leaf.unit == "ms":
        return array.view(_with_leaf(array.type, pa.int64()))
    in_ms = _with_leaf(array.type, pa.timestamp("ms", leaf.tz))
    return array.cast(in_ms, safe=False).view(_with_leaf(array.type, pa.int64()))


def _with_leaf(arrow_type: pa.DataType, leaf: pa.DataType) -> pa.DataType:
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.list_(_with_leaf(arrow_type.value_type, leaf), arrow_type.list_size)
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(_with_leaf(arrow_type.value_type, leaf))
    if pa.types.is_list(arrow_type):
        return pa.list_(_with_leaf(arrow_type.value_type, leaf))
    return leaf


def json_values(array: pa.Array) -> JsonLeaves:
    """Flat values for orjson: numbers as numpy (float32 prints shortest), nulls as ``null``.

    Float nulls become NaN, which orjson writes as ``null``; integer columns with nulls and
    everything else go through Python objects.
    """
    if isinstance(array.type, pa.TimestampType):
        array = epoch_ms(array)
    type_id = array.type.id
    if type_id in _FLOAT_IDS or (type_id in _EXACT_IDS and not array.null_count):
        values: npt.NDArray[np.generic] = array.to_numpy(zero_copy_only=False)
        return values
    pylist: list[JsonValue] = array.to_pylist()
    return pylist
