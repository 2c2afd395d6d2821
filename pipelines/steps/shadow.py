"""The ``shadow`` step: the champion serves ``out.*``; challengers add ``out_<name>.*``."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import structlog

from pipelines.errors import PipelineError
from pipelines.frame import Frame, StepContext
from pipelines.runner import Guarded
from pipelines.steps.model import ModelStep

__all__ = ["Challenger", "ShadowStep"]

_log = structlog.get_logger("headrace.shadow")


class Challenger:
    """A shadowed model: its outputs are kept beside the champion's, its failures are not."""

    def __init__(self, step: Guarded[Frame], model: ModelStep) -> None:
        self.step = step
        self.prefix = f"out_{model.name}."
        self.schema = model.output_schema

    def columns(self, frame: Frame, context: StepContext, *, retry: bool) -> dict[str, pa.Array]:
        try:
            outputs = self.step.run(frame, context, retry=retry).outputs
        except PipelineError as exc:
            _log.warning(
                "challenger failed; its columns are null",
                challenger=self.step.name,
                error_type=exc.error_type,
                error=exc.message,
                rows=frame.num_rows,
            )
            return {
                self.prefix + field.name: pa.nulls(frame.num_rows, field.type)
                for field in self.schema
            }
        assert outputs is not None
        return {
            self.prefix + name: column.combine_chunks()
            for name, column in zip(outputs.column_names, outputs.columns, strict=True)
        }


class ShadowStep:
    """Runs the champion for the result and every challenger beside it."""

    kind = "shadow"

    def __init__(self, champion: Guarded[Frame], challengers: Sequence[Challenger]) -> None:
        self.champion = champion
        self.challengers = tuple(challengers)

    @property
    def name(self) -> str:
        return self.champion.name

    def run(self, frame: Frame, context: StepContext, *, retry: bool) -> Frame:
        served = self.champion.run(frame, context, retry=retry)
        extra: dict[str, pa.Array] = {}
        for challenger in self.challengers:
            extra.update(challenger.columns(frame, context, retry=retry))
        return served.with_extra(extra)
