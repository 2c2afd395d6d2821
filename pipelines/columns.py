"""Columns that repeat one value on every row of a batch, built once and sliced per batch.

``pa.repeat`` of a string copies it once per row, every batch: for the ``metadata`` strings of
a 1,000-row batch that cost more than running the small model. A string array repeating the
value is built once here, as long as the longest batch yet, and each batch gets a zero-copy
slice of it.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pyarrow as pa

__all__ = ["repeat_text"]

_MIN_ROWS = 1024
_MAX_BYTES = 2**31 - 1


def repeat_text(text: str, rows: int) -> pa.Array:
    """A ``string`` array of ``rows`` copies of ``text`` (a slice of a cached one)."""
    return _repeater(text).slice(rows)


class _Repeater:
    __slots__ = ("_array", "_data", "_lock")

    def __init__(self, text: str) -> None:
        self._data = text.encode("utf-8")
        self._lock = threading.Lock()
        self._array = self._build(_MIN_ROWS)

    def slice(self, rows: int) -> pa.Array:
        array = self._array
        if rows > len(array):
            if rows * len(self._data) > _MAX_BYTES:  # past a string array's offsets
                return pa.repeat(pa.scalar(self._data.decode("utf-8")), rows)
            with self._lock:
                array = self._array = self._build(max(rows, 2 * len(self._array)))
        return array.slice(0, rows)

    def _build(self, rows: int) -> pa.Array:
        rows = max(1, min(rows, _MAX_BYTES // max(1, len(self._data))))
        size = len(self._data)
        offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(size)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(self._data * rows)]
        return pa.Array.from_buffers(pa.string(), rows, buffers)


@functools.lru_cache(maxsize=256)
def _repeater(text: str) -> _Repeater:
    return _Repeater(text)
