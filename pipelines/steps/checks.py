"""The ``check`` step: a compiled expression whose true rows become ``anomaly.<name>``."""

from __future__ import annotations

import pyarrow as pa

from pipelines.check import Check
from pipelines.frame import Frame, StepContext

__all__ = ["CheckStep", "available_columns", "resolve_column"]


def resolve_column(frame: Frame, ref: str) -> pa.Array | pa.ChunkedArray:
    """The column a check or split names: ``in.x``, ``out.y`` or ``out_<challenger>.y``."""
    group, _, name = ref.partition(".")
    if group == "in" and name in frame.inputs.column_names:
        return frame.inputs.column(name)
    if group == "out" and frame.outputs is not None and name in frame.outputs.column_names:
        return frame.outputs.column(name)
    if ref in frame.extra:
        return frame.extra[ref]
    raise KeyError(ref)


def available_columns(frame: Frame) -> list[str]:
    names = [f"in.{name}" for name in frame.inputs.column_names]
    if frame.outputs is not None:
        names += [f"out.{name}" for name in frame.outputs.column_names]
    return names + list(frame.extra)


class CheckStep:
    """Evaluates one check over the columns so far."""

    kind = "check"

    def __init__(self, check: Check) -> None:
        self.check = check

    @property
    def name(self) -> str:
        return self.check.name

    def run(self, frame: Frame, context: StepContext, *, retry: bool) -> Frame:
        del context, retry
        fired = self.check(
            lambda ref: resolve_column(frame, ref),
            frame.num_rows,
            available=available_columns(frame),
        )
        return frame.with_anomaly(self.name, fired)
