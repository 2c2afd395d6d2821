"""Pre-processing for the digits example: raw 0..16 pixels to the 0..1 floats the model expects.

Used by ``configs/digits.yaml`` as ``pipelines.examples.digits:preprocess``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["preprocess"]

IMAGE_COLUMN = "image"
DEFAULT_SCALE = 16.0
_IMAGE_TYPE = pa.list_(pa.list_(pa.float32()))


class _Context(Protocol):
    parameters: Mapping[str, str]


def preprocess(table: pa.Table, context: _Context) -> pa.Table:
    """Divide every pixel of the nested ``image`` column by 16 (or the ``scale`` parameter).

    The result's ``image`` is ``list<list<float32>>``; every other column passes through
    unchanged. Vectorised: the pixel values are divided in one Arrow call per chunk and the
    nested lists are rebuilt from their offsets, nulls kept.
    """
    scale = _scale(context.parameters)
    index = table.schema.get_field_index(IMAGE_COLUMN)
    if index < 0:
        raise ValueError(
            f"digits preprocess needs an '{IMAGE_COLUMN}' column (8x8 nested lists of pixel "
            f"values 0..16); the request has columns {table.column_names}"
        )
    column = table.column(index)
    try:
        images = column.cast(_IMAGE_TYPE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(
            f"column '{IMAGE_COLUMN}' must hold nested lists of numbers (list<list<float32>>), "
            f"got {column.type}: {exc}"
        ) from exc
    divisor = pa.scalar(scale, pa.float32())
    scaled = pa.chunked_array(
        [_divide_leaves(chunk, divisor) for chunk in images.chunks], type=_IMAGE_TYPE
    )
    return table.set_column(index, table.schema.field(index).with_type(_IMAGE_TYPE), scaled)


def _scale(parameters: Mapping[str, str]) -> float:
    raw = parameters.get("scale")
    if raw is None:
        return DEFAULT_SCALE
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"parameter 'scale' must be a number, got {raw!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"parameter 'scale' must be a positive number, got {raw!r}")
    return scale


def _divide_leaves(images: pa.ListArray, divisor: pa.Scalar) -> pa.ListArray:
    """``images`` (list<list<float32>>) with each leaf value divided by ``divisor``."""
    rows = images.values
    pixels = pc.divide(rows.values, divisor)
    return _with_values(images, _with_values(rows, pixels))


def _with_values(lists: pa.ListArray, values: pa.Array) -> pa.ListArray:
    """The list array ``lists`` with its child replaced by ``values`` of the same length."""
    # A fresh offsets array (offset 0) so that a null mask is accepted for sliced input.
    offsets = pa.array(lists.offsets.to_numpy(), type=pa.int32())
    mask = lists.is_null() if lists.null_count else None
    return pa.ListArray.from_arrays(offsets, values, mask=mask)
