"""Arrow columns to model tensors and back, with the casting rules of SPEC §3.

A tensor input of per-row shape ``[29]`` is an Arrow ``list<float32>`` column; ``[8, 8]`` is a
``list<list<float32>>``; a scalar per row is a plain column. Values are cast where the cast is
exact or standard (int to float, float64 to float32); anything else is a :class:`SchemaError`
naming the column, what the model expects and what arrived.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import SchemaError

__all__ = ["TensorSpec", "column_to_tensor", "conform_column", "one_array", "tensor_to_column"]

Column: TypeAlias = "pa.Array | pa.ChunkedArray"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: element type and per-row shape (``None`` = any length)."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int | None, ...]

    @property
    def value_type(self) -> pa.DataType:
        return pa.from_numpy_dtype(self.dtype)

    @property
    def arrow_type(self) -> pa.DataType:
        arrow_type = self.value_type
        for _ in self.shape:
            arrow_type = pa.list_(arrow_type)
        return arrow_type

    def describe(self) -> str:
        dims = ", ".join("?" if dim is None else str(dim) for dim in self.shape)
        return f"{self.value_type}[{dims}]" if self.shape else str(self.value_type)


def one_array(column: Column) -> pa.Array:
    """A column as one array, copying only when it has several chunks (``combine_chunks``
    copies even one chunk: for a 1,000-row tensor column that costs more than the model)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def conform_column(column: Column, spec: TensorSpec, column_name: str) -> pa.Array:
    """Cast ``column`` to ``spec``'s Arrow type and check every row's shape."""
    array = one_array(column)
    depth = _list_depth(array.type)
    if depth != len(spec.shape):
        array = _reshape_flat(array, spec) if depth == 1 else None
        if array is None:
            raise _mismatch(column_name, spec, column.type)
    if array.type != spec.arrow_type:
        if not _castable(_leaf_type(array.type), spec.value_type):
            raise _mismatch(column_name, spec, column.type)
        try:
            array = pc.cast(array, spec.arrow_type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"column '{column_name}': expected {spec.describe()}, "
                f"got {column.type} that does not cast exactly: {exc}"
            ) from exc
    _check_shape(array, spec, column_name)
    return array


def column_to_tensor(array: pa.Array, spec: TensorSpec) -> np.ndarray:
    """The ``[rows, *shape]`` numpy tensor of a column already passed through conform_column."""
    values = array
    for _ in spec.shape:
        values = _flat(values)
    flat = values.to_numpy(zero_copy_only=False)
    rows = len(array)
    dims = [dim if dim is not None else -1 for dim in spec.shape]
    if dims.count(-1) > 1:
        dims = _uniform_dims(array, len(spec.shape))
    tensor: np.ndarray = flat.astype(spec.dtype, copy=False).reshape(rows, *dims)
    return tensor


def tensor_to_column(tensor: np.ndarray) -> pa.Array:
    """A ``[rows, *shape]`` tensor as a column: nested lists around the values."""
    if tensor.ndim == 0:
        raise ValueError("a model output needs a batch dimension")
    if tensor.ndim == 1:
        return pa.array(tensor)
    array: pa.Array = pa.array(np.ascontiguousarray(tensor).reshape(-1))
    for dim_index in range(tensor.ndim - 1, 0, -1):
        size = tensor.shape[dim_index]
        count = len(array) // size if size else int(np.prod(tensor.shape[:dim_index]))
        array = pa.ListArray.from_arrays(_offsets(count, size), array)
    return array


@functools.lru_cache(maxsize=64)  # a model's outputs have the same shape batch after batch
def _offsets(count: int, size: int) -> pa.Array:
    """The offsets of ``count`` lists of ``size`` values each."""
    return pa.array(np.arange(count + 1, dtype=np.int32) * np.int32(size))


def _list_depth(arrow_type: pa.DataType) -> int:
    depth = 0
    while (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or (pa.types.is_fixed_size_list(arrow_type))
    ):
        arrow_type = arrow_type.value_type
        depth += 1
    return depth


def _leaf_type(arrow_type: pa.DataType) -> pa.DataType:
    for _ in range(_list_depth(arrow_type)):
        arrow_type = arrow_type.value_type
    return arrow_type


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    if source == target:
        return True
    numeric = bool(pa.types.is_integer(source) or pa.types.is_floating(source))
    if pa.types.is_floating(target) or pa.types.is_integer(target):
        return numeric or bool(pa.types.is_null(source))
    return bool(pa.types.is_boolean(target) and pa.types.is_boolean(source))


def _reshape_flat(array: pa.Array, spec: TensorSpec) -> pa.Array | None:
    """Accept a flat list of ``prod(shape)`` values for a multi-dimensional input."""
    if len(spec.shape) < 2 or any(dim is None for dim in spec.shape):
        return None
    lengths = pc.list_value_length(array)
    size = int(np.prod([dim for dim in spec.shape if dim is not None]))
    if array.null_count or pc.min(lengths).as_py() != size or pc.max(lengths).as_py() != size:
        return None
    values = array.flatten()
    for dim in reversed(spec.shape):
        assert dim is not None
        count = len(values) // dim
        offsets = pa.array(np.arange(0, (count + 1) * dim, dim, dtype=np.int32))
        values = pa.ListArray.from_arrays(offsets, values)
    return values


def _check_shape(array: pa.Array, spec: TensorSpec, column_name: str) -> None:
    level = array
    for axis, dim in enumerate(spec.shape):
        if level.null_count:
            raise SchemaError(
                f"column '{column_name}': null values where {spec.describe()} needs numbers"
            )
        if isinstance(level, pa.FixedSizeListArray):
            if dim is not None and len(level) and level.type.list_size != dim:
                raise _wrong_length(
                    array, spec, column_name, axis=axis, index=0, length=level.type.list_size
                )
            level = _flat(level)
            continue
        # one look at the offsets gives every row's length and the values they span
        offsets = level.offsets.to_numpy()
        if dim is not None and len(level):
            lengths = offsets[1:] - offsets[:-1]
            if _MIN(lengths) != dim or _MAX(lengths) != dim:
                bad = int(np.flatnonzero(lengths != dim)[0])
                raise _wrong_length(
                    array, spec, column_name, axis=axis, index=bad, length=int(lengths[bad])
                )
        level = _flat(level, offsets)
    if level.null_count:
        raise SchemaError(
            f"column '{column_name}': null values where {spec.describe()} needs numbers"
        )


_MIN, _MAX = np.minimum.reduce, np.maximum.reduce  # without numpy's Python-level wrappers


def _wrong_length(
    array: pa.Array, spec: TensorSpec, column_name: str, *, axis: int, index: int, length: int
) -> SchemaError:
    dim = spec.shape[axis]
    return SchemaError(
        f"column '{column_name}': expected {spec.describe()}, but row "
        f"{_row_of(array, axis, index)} has {length} values at axis {axis + 1} instead of {dim}"
    )


def _flat(level: pa.Array, offsets: np.ndarray | None = None) -> pa.Array:
    """The values of a list array without nulls: ``flatten()`` without its compute call
    (``offsets``: the level's offsets as numpy, where the caller has read them already)."""
    if isinstance(level, pa.FixedSizeListArray):
        size = level.type.list_size
        return level.values.slice(level.offset * size, len(level) * size)
    if not len(level):
        return level.flatten()
    if offsets is None:
        bounds = level.offsets
        start, stop = bounds[0].as_py(), bounds[-1].as_py()
    else:
        start, stop = int(offsets[0]), int(offsets[-1])
    return level.values.slice(start, stop - start)


def _row_of(array: pa.Array, axis: int, index: int) -> int:
    """The row of ``array`` that holds the ``index``-th list at nesting level ``axis``."""
    parents_per_level = []
    level = array
    for _ in range(axis):
        parents_per_level.append(pc.list_parent_indices(level))
        level = level.flatten()
    for parents in reversed(parents_per_level):
        index = int(parents[index].as_py())
    return index


def _uniform_dims(array: pa.Array, depth: int) -> list[int]:
    dims = []
    level = array
    for _ in range(depth):
        lengths = pc.list_value_length(level)
        dims.append(int(lengths[0].as_py()) if len(lengths) else 0)
        level = level.flatten()
    return dims


def _mismatch(column_name: str, spec: TensorSpec, actual: pa.DataType) -> SchemaError:
    return SchemaError(
        f"column '{column_name}': expected {spec.describe()} (Arrow {spec.arrow_type}), "
        f"got {actual}"
    )
