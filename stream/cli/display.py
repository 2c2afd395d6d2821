"""What the command line shows: tables as text (long lists shortened, wide values clipped),
and results."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa

from stream.client.files import result_table

__all__ = ["render_result", "render_table"]

_MAX_LIST = 3
_MAX_CELL = 48


def render_table(table: pa.Table, *, max_rows: int = 20) -> str:
    """A plain-text grid of the first ``max_rows`` rows, with a row count below when cut."""
    rows = table.slice(0, max_rows).to_pylist()
    names = table.column_names
    cells = [[_cell(row[name]) for name in names] for row in rows]
    widths = [max([len(name), *(len(line[i]) for line in cells)]) for i, name in enumerate(names)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    if table.num_rows > max_rows:
        lines.append(f"... {table.num_rows - max_rows} more rows ({table.num_rows} in all)")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(_cell(item) for item in value[:_MAX_LIST])
        more = f", ... {len(value)} values" if len(value) > _MAX_LIST else ""
        return f"[{shown}{more}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="milliseconds"))
    text = str(value)
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def render_result(result: Any, *, max_rows: int = 20) -> str:
    """A result as text: a grid for rows, indented JSON for a custom JSON value."""
    table = result_table(result)
    if table is None:
        return orjson.dumps(
            result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
        ).decode()
    return render_table(table, max_rows=max_rows)
