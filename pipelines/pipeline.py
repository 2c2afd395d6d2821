"""``Pipeline``: a deployment's step chain, served in-process or by the Kafka worker."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from pipelines import formats
from pipelines.build import build
from pipelines.config import Settings, load_settings
from pipelines.errors import DecodeError, PipelineError, StepError
from pipelines.frame import Frame, StepContext
from pipelines.results import assemble, select

__all__ = ["BatchResult", "Pipeline", "Segment", "Served"]

# uuid5 namespace of pipeline versions: the same definition and models give the same version
_VERSION_NAMESPACE = uuid.UUID("6f1c2a5e-8a53-4c4e-9d63-3f0b7c1d2e4a")

Served: TypeAlias = "pa.Table | PipelineError"


@dataclass(frozen=True, slots=True)
class Segment:
    """Consecutive requests served together: request ``first`` onwards, rows in order."""

    first: int
    row_counts: tuple[int, ...]
    table: pa.Table
    step_ns: tuple[int, ...] = ()  # nanoseconds per top-level step, as in metadata.elapsed

    @property
    def requests(self) -> range:
        return range(self.first, self.first + len(self.row_counts))

    def request_table(self, index: int) -> pa.Table:
        """The result rows of request ``index`` (which must lie in this segment)."""
        position = index - self.first
        return self.table.slice(sum(self.row_counts[:position]), self.row_counts[position])


@dataclass(slots=True)
class BatchResult:
    """A served micro-batch: segments of results, and the errors of the requests that failed."""

    segments: list[Segment] = field(default_factory=list)
    errors: dict[int, PipelineError] = field(default_factory=dict)

    def per_request(self) -> list[Served]:
        results: dict[int, Served] = dict(self.errors)
        for segment in self.segments:
            offset = 0
            for index, count in zip(segment.requests, segment.row_counts, strict=True):
                results[index] = segment.table.slice(offset, count)
                offset += count
        return [results[index] for index in sorted(results)]


class Pipeline:
    """A deployment's steps, loaded once: ``infer`` in-process, ``serve`` for micro-batches."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self._clock_ns = clock_ns
        self._built = build(settings, sleep=sleep, rng=np.random.default_rng(seed))
        self.version = _version(settings, {k: m.sha256 for k, m in self._built.models.items()})

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **options: Any) -> Pipeline:
        """Load ``configs/<name>.yaml`` (with ``HEADRACE_*`` overrides) and open its models."""
        return cls(load_settings(path), **options)

    @property
    def name(self) -> str:
        return self.settings.pipeline.name

    @property
    def is_custom(self) -> bool:
        """Whether requests are custom JSON handed to python steps as they are."""
        return bool(self._built.custom_steps)

    @property
    def step_names(self) -> list[str]:
        if self.is_custom:
            return [step.name for step in self._built.custom_steps]
        return [step.name for step in self._built.chain.steps]

    @property
    def input_schema(self) -> pa.Schema | None:
        """The columns the first model takes (``None`` for custom JSON pipelines)."""
        if self._built.entry_model is not None:
            return self._built.entry_model.input_schema
        models = list(self._built.models.values())
        return models[0].input_schema if models else None

    @property
    def output_schema(self) -> pa.Schema | None:
        """The ``out.*`` columns the last model produces, before checks and metadata."""
        models = list(self._built.models.values())
        return models[-1].output_schema if models else None

    def conform(self, table: pa.Table) -> pa.Table:
        """Cast a request to the first model's input types; a misfit raises SchemaError."""
        if table.num_rows == 0:
            raise DecodeError("a request needs at least one row")
        entry = self._built.entry_model
        return table if entry is None else entry.conform(table)

    def serve(
        self,
        tables: Sequence[pa.Table],
        parameters: Mapping[str, str] | None = None,
        decode_ns: Sequence[int] | None = None,
    ) -> list[Served]:
        """Serve requests (conformed tables) as micro-batches: one entry per request.

        Each entry is the request's full result table or the error that failed it.
        """
        results: list[Served | None] = [None] * len(tables)
        decode = list(decode_ns) if decode_ns is not None else [0] * len(tables)
        by_schema: dict[pa.Schema, list[int]] = {}
        for index, table in enumerate(tables):
            by_schema.setdefault(table.schema, []).append(index)
        for indices in by_schema.values():
            group = [tables[index] for index in indices]
            batch = self.serve_batch(
                pa.concat_tables(group) if len(group) > 1 else group[0],
                [table.num_rows for table in group],
                parameters,
                [decode[index] for index in indices],
            )
            for position, result in enumerate(batch.per_request()):
                results[indices[position]] = result
        return [result for result in results if result is not None]

    def serve_batch(
        self,
        table: pa.Table,
        row_counts: Sequence[int],
        parameters: Mapping[str, str] | None = None,
        decode_ns: Sequence[int] | None = None,
    ) -> BatchResult:
        """Serve one micro-batch: ``table`` holds the requests' rows, ``row_counts`` their sizes.

        A failing batch is bisected until the failing requests are alone; only a request
        served on its own has its steps retried, so one bad request never fails its
        neighbours. Results come back as contiguous segments of requests.
        """
        context = StepContext(MappingProxyType(dict(parameters or {})), pipeline=self.name)
        result = BatchResult()
        starts = np.concatenate([[0], np.cumsum(row_counts)]).astype(int).tolist()
        decode = list(decode_ns) if decode_ns is not None else [0] * len(row_counts)
        self._serve_range(_Run(table, starts, decode, context, result), 0, len(row_counts))
        return result

    def serve_custom(self, value: Any, parameters: Mapping[str, str] | None = None) -> Any:
        """Run a custom JSON pipeline on one request's JSON value."""
        context = StepContext(MappingProxyType(dict(parameters or {})), pipeline=self.name)
        for step in self._built.custom_steps:
            value = step.run(value, context, retry=True)
        _check_json(value, self.step_names[-1])
        return value

    def infer(
        self,
        data: pd.DataFrame | pa.Table | dict[str, Any] | list[Any],
        dataset: Sequence[str] | None = None,
        dataset_exclude: Sequence[str] | None = None,
        dataset_separator: str = ".",
        parameters: Mapping[str, str] | None = None,
    ) -> Any:
        """Serve ``data`` in-process; the result has the type of the input (SPEC §7)."""
        if self.is_custom:
            return self.serve_custom(data, parameters)
        started = time.perf_counter_ns()
        if isinstance(data, pd.DataFrame):
            table = formats.table_from_pandas(data)
        elif isinstance(data, pa.Table):
            table = data
        elif isinstance(data, dict | list):
            table = formats.table_from_records(data)
        else:
            raise TypeError(
                f"infer takes a pandas.DataFrame, a pyarrow.Table or JSON (dict or list), "
                f"not {type(data).__name__}"
            )
        table = self.conform(table)
        (result,) = self.serve([table], parameters, [time.perf_counter_ns() - started])
        if isinstance(result, PipelineError):
            raise result
        processing = self.settings.processing
        selected = select(
            result,
            dataset if dataset is not None else processing.dataset,
            dataset_exclude if dataset_exclude is not None else processing.dataset_exclude,
            dataset_separator,
        )
        if isinstance(data, pd.DataFrame):
            return formats.table_to_pandas(selected)
        if isinstance(data, pa.Table):
            return selected
        return orjson.loads(formats.encode(selected, formats.Format.PANDAS_RECORDS))

    def _serve_range(self, run: _Run, first: int, stop: int) -> None:
        """Serve requests ``first..stop-1``, bisecting on failure."""
        starts = run.starts
        batch = run.table.slice(starts[first], starts[stop] - starts[first])
        step_ns: list[int] = []
        try:
            frame = self._built.chain.run(
                Frame.start(batch), run.context, retry=stop - first == 1, elapsed=step_ns
            )
        except PipelineError as exc:
            if stop - first == 1:
                run.result.errors[first] = exc
                return
            middle = (first + stop) // 2
            self._serve_range(run, first, middle)
            self._serve_range(run, middle, stop)
            return
        counts = tuple(starts[i + 1] - starts[i] for i in range(first, stop))
        served = assemble(
            frame,
            served_at_ms=self._clock_ns() // 1_000_000,
            version=self.version,
            step_ns=step_ns,
            decode_ns=run.decode_ns[first:stop],
            rows_per_request=counts,
        )
        run.result.segments.append(
            Segment(first=first, row_counts=counts, table=served, step_ns=tuple(step_ns))
        )


@dataclass(frozen=True, slots=True)
class _Run:
    """One ``serve_batch`` call: the batch, where each request starts, and what came of it."""

    table: pa.Table
    starts: list[int]
    decode_ns: list[int]
    context: StepContext
    result: BatchResult


def _version(settings: Settings, hashes: Mapping[str, str]) -> str:
    definition = settings.pipeline.model_dump(mode="json", exclude_none=True)
    _strip_paths(definition)
    text = json.dumps(
        {"pipeline": definition, "models": dict(sorted(hashes.items()))}, sort_keys=True
    )
    return str(uuid.uuid5(_VERSION_NAMESPACE, text))


def _strip_paths(node: Any) -> None:
    """Drop model paths: a model is identified by its hash, wherever the file lies."""
    if isinstance(node, dict):
        node.pop("path", None)
        node.pop("sha256", None)
        for value in node.values():
            _strip_paths(value)
    elif isinstance(node, list):
        for item in node:
            _strip_paths(item)


def _check_json(value: Any, step: str) -> None:
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise StepError(
            f"python step '{step}' returned a value that is not JSON: {exc}", step=step
        ) from exc
