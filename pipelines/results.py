"""The result table of SPEC §4, and the ``dataset`` selection of its columns."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.columns import repeat_text
from pipelines.errors import SchemaError
from pipelines.frame import Frame

__all__ = ["GROUPS", "assemble", "groups_for", "select"]

GROUPS = ("time", "in", "out", "check_failures", "anomaly", "metadata")
TIME_TYPE = pa.timestamp("ms", tz="UTC")


def assemble(
    frame: Frame,
    *,
    served_at_ms: int,
    version: str,
    step_ns: Sequence[int],
    decode_ns: Sequence[int],
    rows_per_request: Sequence[int],
    groups: frozenset[str] | None = None,
) -> pa.Table:
    """Every result column, in SPEC order; ``select`` then keeps what the request asked for.

    With ``groups`` (see :func:`groups_for`), only the columns of those groups are built: the
    columns nobody asked for cost nothing.
    """
    rows = frame.num_rows
    names: list[str] = []
    columns: list[pa.Array | pa.ChunkedArray] = []
    if groups is None or "time" in groups:
        names.append("time")
        columns.append(pa.repeat(pa.scalar(served_at_ms, TIME_TYPE), rows))
    for prefix, table in (("in", frame.inputs), ("out", frame.outputs)):
        if table is not None and (groups is None or prefix in groups):
            names += [f"{prefix}.{name}" for name in table.column_names]
            columns += table.columns
    if groups is None or "out" in groups:
        names += list(frame.extra)
        columns += frame.extra.values()
    if groups is None or "check_failures" in groups:
        names.append("check_failures")
        columns.append(_check_failures(frame.anomalies.values(), rows))
    if groups is None or "anomaly" in groups:
        names += [f"anomaly.{name}" for name in frame.anomalies]
        columns += frame.anomalies.values()
    if groups is None or "metadata" in groups:
        names += ["metadata.elapsed", "metadata.last_model", "metadata.pipeline_version"]
        columns += [
            _elapsed(step_ns, decode_ns, rows_per_request),
            frame.last_model if frame.last_model is not None else pa.nulls(rows, pa.string()),
            repeat_text(version, rows),
        ]
    return pa.Table.from_arrays(columns, names=names)


_STAR = frozenset(("time", "in", "out", "check_failures", "anomaly"))


@functools.lru_cache(maxsize=256)
def groups_for(dataset: tuple[str, ...] | None) -> frozenset[str] | None:
    """The groups whose columns ``dataset`` can select, or None when that cannot be told
    without the column names (an entry written with another separator, or unknown): then
    every group is built, and :func:`select` resolves (or refuses) the entry as it always does.
    Exclusions never take a group away here: :func:`select` applies them."""
    if dataset is None:
        return _STAR
    wanted: set[str] = set()
    for raw in dataset:
        entry = raw.strip()
        head = entry.partition(".")[0]
        head = "metadata" if head == "meta" else head
        if entry == "*":
            wanted |= _STAR
        elif head in GROUPS:
            wanted.add(head)
        elif head.startswith("out_") and "." in entry:  # a challenger's or split's column
            wanted.add("out")
        else:
            return None
    return frozenset(wanted)


def select(
    table: pa.Table,
    dataset: Iterable[str] | None = None,
    dataset_exclude: Iterable[str] | None = None,
    separator: str = ".",
) -> pa.Table:
    """The columns ``dataset`` asks for, less ``dataset_exclude``, named with ``separator``.

    Entries are groups (``time``, ``in``, ``out``, ``check_failures``, ``anomaly``,
    ``metadata``, also spelled ``meta``), single columns (``out.dense_1``), or ``*`` for every
    group but ``metadata``.
    """
    keep, renamed = _selection(
        tuple(table.column_names),
        ("*",) if dataset is None else tuple(dataset),
        tuple(dataset_exclude or ()),
        separator,
    )
    selected = table.select(keep)
    return selected if renamed is None else selected.rename_columns(renamed)


@functools.lru_cache(maxsize=1024)  # a batch's columns and its requests' datasets repeat
def _selection(
    names: tuple[str, ...], dataset: tuple[str, ...], exclude: tuple[str, ...], separator: str
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """The columns :func:`select` keeps, and their new names when the separator is not '.'."""
    wanted = _normalise(dataset, separator, names)
    unwanted = _normalise(exclude, separator, names)
    _check_known(names, wanted | unwanted)
    keep = tuple(
        name
        for name in names
        if _matches(name, wanted, star=True) and not _matches(name, unwanted, star=False)
    )
    if separator == ".":
        return keep, None
    return keep, tuple(name.replace(".", separator, 1) for name in keep)


def _group(name: str) -> str:
    group = name.partition(".")[0]
    return "out" if group.startswith("out_") else group


def _matches(name: str, entries: set[str], *, star: bool) -> bool:
    group = _group(name)
    if star and "*" in entries and group != "metadata":
        return True
    return name in entries or group in entries or name.partition(".")[0] in entries


def _normalise(entries: Iterable[str], separator: str, names: Sequence[str]) -> set[str]:
    """Entries as dotted names: a field written with ``separator`` maps back to its column.

    Only the names the result has are mapped, so ``check_failures`` or ``out_<challenger>.y``
    written as ``out_<challenger>_y`` are never misread by splitting at the first ``_``.
    """
    known = set(names)
    renamed = {} if separator == "." else {n.replace(".", separator, 1): n for n in names}
    result = set()
    for raw in entries:
        entry = raw.strip()
        if entry not in known:
            entry = renamed.get(entry, entry)
        group, dot, field = entry.partition(".")
        if group == "meta":  # Wallaroo's documents name the metadata group `meta`
            entry = f"metadata{dot}{field}"
        if entry:
            result.add(entry)
    return result


def _check_known(names: Sequence[str], entries: set[str]) -> None:
    known = {"*", *GROUPS, *names, *(name.partition(".")[0] for name in names)}
    unknown = sorted(entries - known)
    if unknown:
        raise SchemaError(
            f"dataset names {unknown[0]!r}, which is neither a group ({', '.join(GROUPS)}) "
            f"nor a column of the result ({', '.join(names)})"
        )


def _check_failures(anomalies: Iterable[pa.Array], rows: int) -> pa.Array:
    total = np.zeros(rows, dtype=np.int8)
    for fired in anomalies:
        total += pc.fill_null(fired, False).to_numpy(zero_copy_only=False).astype(np.int8)
    return pa.array(total, type=pa.int8())


def _elapsed(
    step_ns: Sequence[int], decode_ns: Sequence[int], rows_per_request: Sequence[int]
) -> pa.Array:
    width = 1 + len(step_ns)
    rows = int(sum(rows_per_request))
    matrix = np.empty((rows, width), dtype=np.int64)
    matrix[:, 0] = np.repeat(np.asarray(decode_ns, dtype=np.int64), rows_per_request)
    matrix[:, 1:] = np.asarray(step_ns, dtype=np.int64)
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
