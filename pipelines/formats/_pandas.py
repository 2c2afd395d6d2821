"""DataFrames to tables and back, with numpy arrays in cells as (nested) list columns."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from pipelines.formats._tensors import is_list, nest, one_array, uniform_shape

__all__ = ["table_from_pandas", "table_to_pandas"]


def table_from_pandas(df: pd.DataFrame) -> pa.Table:
    """The frame as a table, without its index; numpy arrays in cells become list columns.

    Strings are ``string`` whatever pandas stored them as.

    A column of n-D arrays (e.g. 8x8) becomes a nested list column, ``list<list<T>>``.
    """
    names = [str(name) for name in df.columns]
    arrays = [_column(df.iloc[:, position]) for position in range(df.shape[1])]
    return pa.Table.from_arrays(arrays, names=names)


def _column(series: pd.Series) -> pa.Array:
    if series.dtype == object:
        cells = series.to_numpy()
        if len(cells) and all(isinstance(cell, np.ndarray) for cell in cells):
            return _tensor_column(cells)
        if any(isinstance(cell, np.ndarray) and cell.ndim > 1 for cell in cells):
            return pa.array([_plain(cell) for cell in cells])
    array = pa.array(series, from_pandas=True)
    if pa.types.is_large_string(array.type):  # pandas' arrow-backed str dtype
        return array.cast(pa.string())
    return array


def _tensor_column(cells: np.ndarray) -> pa.Array:
    """Cells that are all numpy arrays; one shape and dtype stack into one flat buffer."""
    first = cells[0]
    if all(cell.shape == first.shape and cell.dtype == first.dtype for cell in cells):
        stacked = np.stack(list(cells))
        return nest(pa.array(stacked.reshape(-1)), len(cells), first.shape)
    return pa.array([_plain(cell) for cell in cells])


def _plain(cell: object) -> object:
    return cell.tolist() if isinstance(cell, np.ndarray) else cell


def table_to_pandas(table: pa.Table) -> pd.DataFrame:
    """The table as a frame: list cells are numpy arrays, n-D for nested lists of one shape.

    Nested lists whose rows differ in shape come back as Python lists; null lists as ``None``.
    Timestamps keep their unit and time zone (``time`` stays tz-aware UTC).
    """
    frame: pd.DataFrame = table.to_pandas()
    for position, column in enumerate(table.columns):
        if is_list(column.type) and is_list(column.type.value_type):
            frame.isetitem(position, _nested_cells(one_array(column)))
    return frame


def _nested_cells(array: pa.Array) -> npt.NDArray[np.object_]:
    cells = np.empty(len(array), dtype=object)
    shaped = uniform_shape(array)
    if isinstance(shaped, str) or shaped[0].null_count or not _is_numeric(shaped[0].type):
        for row, value in enumerate(array.to_pylist()):
            cells[row] = value
        return cells
    leaf, dims = shaped
    tensors = leaf.to_numpy(zero_copy_only=False).reshape(len(array), *dims)
    for row, tensor in enumerate(tensors):  # one object per row: numpy cannot assign n-D cells
        cells[row] = tensor
    return cells


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )
