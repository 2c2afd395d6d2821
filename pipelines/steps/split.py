"""The ``random_split`` step: rows routed to branches by weight, sticky per ``hash_key``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.config import SplitSpec
from pipelines.errors import SchemaError
from pipelines.frame import Frame, StepContext
from pipelines.runner import Chain

__all__ = ["SPLIT_COLUMN", "SplitStep"]

SPLIT_COLUMN = "out._model_split"


class SplitStep:
    """Routes each row to one branch; ``out._model_split`` names the branch that served it."""

    kind = "random_split"
    name = "random_split"

    def __init__(
        self, spec: SplitSpec, branches: Mapping[str, Chain], rng: np.random.Generator
    ) -> None:
        self.spec = spec
        self.branches = dict(branches)
        self._names = np.array(list(spec.weights), dtype=object)
        self._bounds = np.cumsum(list(spec.weights.values()))
        self._rng = rng

    def run(self, frame: Frame, context: StepContext, *, retry: bool) -> Frame:
        branch_of_row = self.route(frame)
        parts: list[tuple[np.ndarray, Frame]] = []
        for index, name in enumerate(self._names):
            rows = np.flatnonzero(branch_of_row == index)
            if len(rows):
                part = self.branches[name].run(frame.take(pa.array(rows)), context, retry=retry)
                parts.append((rows, part))
        merged = _merge(frame, parts)
        split_column = pa.array(self._names[branch_of_row], type=pa.string())
        return merged.with_extra({SPLIT_COLUMN: split_column})

    def route(self, frame: Frame) -> np.ndarray:
        """The branch index of every row."""
        total = int(self._bounds[-1])
        if self.spec.hash_key is None:
            slots = self._rng.integers(0, total, size=frame.num_rows)
        else:
            slots = _hash_slots(frame, self.spec.hash_key, total)
        return np.searchsorted(self._bounds, slots, side="right")


def _hash_slots(frame: Frame, hash_key: str, total: int) -> np.ndarray:
    name = hash_key.removeprefix("in.")
    if name not in frame.inputs.column_names:
        raise SchemaError(
            f"random_split hash_key '{hash_key}' is not a column of the request; "
            f"it has {frame.inputs.column_names}"
        )
    values = frame.inputs.column(name).to_numpy(zero_copy_only=False)
    hashes = pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)
    return (hashes % np.uint64(total)).astype(np.int64)


def _merge(frame: Frame, parts: list[tuple[np.ndarray, Frame]]) -> Frame:
    """Put the branches' rows back in the frame's order; a column one branch lacks is null."""
    order = np.concatenate([rows for rows, _ in parts])
    back = pa.array(np.argsort(order, kind="stable"))
    merged = pa.concat_tables(
        [_flatten(part) for _, part in parts], promote_options="permissive"
    ).take(back)
    groups: dict[str, dict[str, pa.ChunkedArray]] = {}
    for key, column in zip(merged.column_names, merged.columns, strict=True):
        group, _, name = key.partition(_SEP)
        groups.setdefault(group, {})[name] = column
    outputs = groups.get("outputs")
    return replace(
        frame,
        current=pa.table(groups.get("current", {})),
        outputs=pa.table(outputs) if outputs else frame.outputs,
        anomalies=MappingProxyType(
            {
                name: column.combine_chunks().fill_null(False)
                for name, column in groups.get("anomaly", {}).items()
            }
        ),
        extra=MappingProxyType(
            {name: column.combine_chunks() for name, column in groups.get("extra", {}).items()}
        ),
        last_model=groups["last_model"][""].combine_chunks() if "last_model" in groups else None,
    )


_SEP = "\x00"


def _flatten(part: Frame) -> pa.Table:
    """All of a frame's per-row columns in one table, keyed ``<group>\\x00<name>``."""
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    columns.update({f"current{_SEP}{n}": c for n, c in _named(part.current)})
    if part.outputs is not None:
        columns.update({f"outputs{_SEP}{n}": c for n, c in _named(part.outputs)})
    columns.update({f"anomaly{_SEP}{n}": c for n, c in part.anomalies.items()})
    columns.update({f"extra{_SEP}{n}": c for n, c in part.extra.items()})
    if part.last_model is not None:
        columns[f"last_model{_SEP}"] = part.last_model
    return pa.table(columns)


def _named(table: pa.Table) -> zip[tuple[str, pa.ChunkedArray]]:
    return zip(table.column_names, table.columns, strict=True)
