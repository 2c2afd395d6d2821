"""The value that moves through the step chain, and the context a step is called with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Self

import pyarrow as pa

__all__ = ["Frame", "StepContext"]

_EMPTY: Mapping[str, pa.Array] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a python step sees besides its table: the request's parameters."""

    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    pipeline: str = ""


@dataclass(frozen=True, slots=True)
class Frame:
    """The rows of one micro-batch on their way through the chain.

    ``inputs`` are the request's columns (echoed as ``in.*``); ``current`` holds the columns
    the next step reads; ``outputs`` are the last model or python step's columns (``out.*``);
    ``extra`` holds challenger and split columns already named (``out_<name>.<col>``);
    ``anomalies`` holds one boolean column per check; ``last_model`` one JSON string per row.
    ``conformed`` is the model step whose input types ``inputs`` already has (the entry
    model, when the batch was conformed at intake), so that it need not conform them again.
    """

    inputs: pa.Table
    current: pa.Table
    outputs: pa.Table | None = None
    extra: Mapping[str, pa.Array] = field(default_factory=lambda: _EMPTY)
    anomalies: Mapping[str, pa.Array] = field(default_factory=lambda: _EMPTY)
    last_model: pa.Array | None = None
    conformed: object = None

    @classmethod
    def start(cls, table: pa.Table, conformed: object = None) -> Self:
        return cls(inputs=table, current=table, conformed=conformed)

    @property
    def num_rows(self) -> int:
        return int(self.inputs.num_rows)

    def with_outputs(self, outputs: pa.Table) -> Frame:
        """The frame after a step produced ``outputs``: they become ``out.*`` and readable."""
        current = self.current
        for name, column in zip(outputs.column_names, outputs.columns, strict=True):
            index = current.schema.get_field_index(name)
            if index >= 0:
                current = current.set_column(index, name, column)
            else:
                current = current.append_column(name, column)
        return replace(self, current=current, outputs=outputs)

    def with_extra(self, columns: Mapping[str, pa.Array]) -> Frame:
        return replace(self, extra=MappingProxyType({**self.extra, **columns}))

    def with_anomaly(self, name: str, fired: pa.Array) -> Frame:
        return replace(self, anomalies=MappingProxyType({**self.anomalies, name: fired}))

    def take(self, indices: pa.Array) -> Frame:
        """The frame restricted to the rows at ``indices``, in that order."""
        return Frame(
            inputs=self.inputs.take(indices),
            current=self.current.take(indices),
            outputs=None if self.outputs is None else self.outputs.take(indices),
            extra=MappingProxyType({k: v.take(indices) for k, v in self.extra.items()}),
            anomalies=MappingProxyType({k: v.take(indices) for k, v in self.anomalies.items()}),
            last_model=None if self.last_model is None else self.last_model.take(indices),
        )
