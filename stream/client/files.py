"""Request and result files of the client and of ``headrace infer`` / ``headrace batch``.

Requests: ``.arrow`` (an Arrow IPC file or stream) and ``.json`` / ``.df.json``
(pandas-records JSON); any JSON file with ``data_format="custom-json"``. Results: written as
an Arrow IPC file (``.arrow``) or JSON (``.json``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from pipelines import formats
from pipelines.errors import PipelineError
from pipelines.formats import Format

__all__ = [
    "DATA_FORMATS",
    "check_output_path",
    "read_request_file",
    "read_table_file",
    "result_table",
    "write_result",
]

DATA_FORMATS = ("arrow", "pandas-records", "custom-json")
"""The ``data_format`` values of ``infer_from_file`` (and ``headrace infer --format``)."""

_FORMATS = {
    "arrow": "arrow",
    "arrow-file": "arrow",
    "arrow-stream": "arrow",
    "pandas-records": "pandas-records",
    "custom-json": "custom-json",
    "custom": "custom-json",
}
_ACCEPTED = (
    "an .arrow file (Arrow IPC file or stream), a .json or .df.json file (pandas-records "
    "JSON), or any JSON file with data_format='custom-json'"
)
_OUTPUTS = (".arrow", ".json")


def read_request_file(
    path: str | os.PathLike[str], data_format: str | None = None
) -> tuple[Any, Format | None]:
    """The data in a request file, and the JSON format it asks for (None: the pipeline's).

    ``.arrow`` gives a Table, ``.json`` parsed JSON; ``data_format`` ('arrow',
    'pandas-records' or 'custom-json') overrides the suffix. Anything else is a ValueError
    naming the file and the accepted kinds; a missing file is FileNotFoundError.
    """
    source = Path(path)
    kind = _kind(source, data_format)
    raw = source.read_bytes()
    if kind == "arrow":
        return _read_arrow(source, raw), None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from exc
    if kind == "custom-json":
        return value, Format.CUSTOM
    return value, None if data_format is None else Format.PANDAS_RECORDS


def read_table_file(path: str | os.PathLike[str]) -> pa.Table:
    """The rows of an ``.arrow`` or pandas-records ``.json`` file, as a table."""
    data, fmt = read_request_file(path)
    if isinstance(data, pa.Table):
        return data
    if fmt is Format.CUSTOM or not isinstance(data, dict | list) or not data:
        raise ValueError(
            f"{path}: not rows of a table; give an .arrow or pandas-records .json file"
        )
    try:
        return formats.table_from_records(data)
    except PipelineError as exc:
        raise ValueError(f"{path}: not pandas-records JSON: {exc}") from exc


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it names an ``.arrow`` or ``.json`` file, else a ValueError."""
    target = Path(path)
    if target.suffix.lower() not in _OUTPUTS:
        raise ValueError(f"{target}: results are written as .arrow (Arrow IPC file) or .json")
    return target


def write_result(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write a result (Table, DataFrame or JSON) as an Arrow IPC file or as JSON."""
    target = check_output_path(path)
    table = result_table(result)
    if target.suffix.lower() == ".arrow":
        if table is None:
            raise ValueError(f"{target}: a custom JSON result can only be written as .json")
        with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    elif table is not None and not isinstance(result, list | dict):
        target.write_bytes(formats.encode(table, Format.PANDAS_RECORDS))
    else:
        target.write_bytes(formats.encode_value(result))
    return target


def result_table(result: Any) -> pa.Table | None:
    """The rows of a result; None for JSON that is not pandas-records rows."""
    if isinstance(result, pa.Table):
        return result
    if isinstance(result, pd.DataFrame):
        return formats.table_from_pandas(result)
    rows = [result] if isinstance(result, dict) else result
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    try:
        table = formats.table_from_records(rows)
    except PipelineError:
        return None
    if "time" in table.column_names and pa.types.is_integer(table.schema.field("time").type):
        index = table.column_names.index("time")
        time = table.column(index).cast(pa.timestamp("ms", tz="UTC"))
        table = table.set_column(index, "time", time)  # pandas-records sends epoch ms
    return table


def _kind(source: Path, data_format: str | None) -> str:
    if data_format is not None:
        kind = _FORMATS.get(str(data_format).lower())
        if kind is None:
            accepted = ", ".join(repr(name) for name in DATA_FORMATS)
            raise ValueError(f"unknown data_format {data_format!r}: use one of {accepted}")
        return kind
    suffix = source.suffix.lower()
    if suffix == ".arrow":
        return "arrow"
    if suffix == ".json":
        return "pandas-records"
    raise ValueError(
        f"{source}: cannot tell the request format from the file name; give {_ACCEPTED}"
    )


def _read_arrow(source: Path, raw: bytes) -> pa.Table:
    buffer = pa.py_buffer(raw)
    try:
        if raw.startswith(b"ARROW1"):
            return pa.ipc.open_file(buffer).read_all()
        return pa.ipc.open_stream(buffer).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{source}: not an Arrow IPC file or stream: {exc}") from exc
