"""Every result of every tool checked: one per request, ``out.*`` only, values within 1e-3 of
onnxruntime run in this process on the same rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import orjson
import pyarrow as pa

from benchmarks._kafka import Record

if TYPE_CHECKING:
    from benchmarks._harness import Workload

__all__ = ["TOLERANCE", "Reference", "check", "reference"]

TOLERANCE = 1e-3

Reference = npt.NDArray[np.float32]  # the model's output on the 1,000 sample rows


def reference(model: Path, rows: npt.NDArray[np.float32]) -> Reference:
    """The model's output on ``rows``, in this process."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    result: Reference = session.run(None, {session.get_inputs()[0].name: rows})[0]
    return result


def check(workload: Workload, results: list[Record], expected: Reference | None) -> list[str]:
    """What is wrong with ``results``: missing, repeated or unknown requests (by key), and,
    with ``expected``, results that carry other columns or values off by more than 1e-3."""
    problems: list[str] = []
    keys = Counter(record.key for record in results)
    wanted = {str(i).encode() for i in range(workload.requests)}
    if missing := len(wanted - keys.keys()):
        problems.append(f"{missing:,} of {workload.requests:,} requests without a result")
    if repeated := sum(n - 1 for key, n in keys.items() if n > 1):
        problems.append(f"{repeated:,} results repeated")
    if unknown := len(keys.keys() - wanted):
        problems.append(f"{unknown:,} results of no request")
    if expected is None:
        return problems
    bad: Counter[str] = Counter()
    for record in results:
        index = int(record.key or b"-1")
        if index < 0 or record.value is None:
            continue
        rows = expected[index % 1000 : index % 1000 + 1] if workload.kind == "J" else expected
        bad[_wrong(record.value, workload.kind, rows)] += 1
    bad.pop("", None)
    problems += [f"{n:,} results {what}" for what, n in bad.items()]
    return problems


def _wrong(value: bytes, kind: str, expected: Reference) -> str:
    """Why this result payload is not ``expected``; empty when it is."""
    try:
        names, got = _json(value) if kind == "J" else _arrow(value)
    except (ValueError, TypeError, KeyError, IndexError, pa.ArrowException) as exc:
        return f"undecodable ({type(exc).__name__})"
    if got is None or not names[0].startswith("out."):
        return f"carrying columns {names}, not one out.* column"
    if got.shape != expected.shape:
        return f"of shape {got.shape}, not {expected.shape}"
    if not np.allclose(got, expected, rtol=0.0, atol=TOLERANCE):
        return f"off by more than {TOLERANCE:g}"
    return ""


def _json(value: bytes) -> tuple[list[str], npt.NDArray[np.float64] | None]:
    records = orjson.loads(value)
    names = sorted({name for record in records for name in record})
    if len(names) != 1:
        return names, None
    return names, np.asarray([record[names[0]] for record in records], dtype=np.float64)


def _arrow(value: bytes) -> tuple[list[str], npt.NDArray[np.float64] | None]:
    table = pa.ipc.open_stream(value).read_all()
    if table.num_columns != 1:
        return table.column_names, None
    column = table.column(0).combine_chunks()
    values = column.flatten().to_numpy() if pa.types.is_list(column.type) else column.to_numpy()
    return table.column_names, np.asarray(values, dtype=np.float64).reshape(table.num_rows, -1)
