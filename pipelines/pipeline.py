"""``Pipeline``: a deployment's step chain, served in-process or by the Kafka worker."""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections import Counter
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
from pipelines.errors import DecodeError, PipelineError, StepError, StepTimeout
from pipelines.frame import Frame, StepContext
from pipelines.results import assemble, select
from pipelines.runner import BudgetSpent, Saturated, Stopped, Watch, isolation_levels, watching

__all__ = ["BatchResult", "Pipeline", "Segment", "Served", "Stopped"]

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
    """A served micro-batch: segments of results, and the errors of the requests that failed.

    ``unserved`` lists the requests left when ``should_stop`` ended the call: neither results
    nor dead letters, to be served again (their offsets stay uncommitted).
    """

    segments: list[Segment] = field(default_factory=list)
    errors: dict[int, PipelineError] = field(default_factory=dict)
    unserved: list[int] = field(default_factory=list)

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
        self._worst_case_s = {  # every step's longest run, with retries and without
            retry: sum(step.worst_case_s(retry=retry) for step in self._built.guarded)
            for retry in (False, True)
        }

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

    def warm_up(self, rows: int | None = None) -> list[str]:
        """Run every model once on a dummy batch of ``rows`` rows (default: ``batching.max_rows``,
        at most 1,000) shaped from its input schema: a worker calls it before it joins its group
        and before a reloaded pipeline takes over (SPEC §6). A model that fails on zeros is not
        an error here; the models that failed come back as ``"<name>: <error>"``."""
        count = rows if rows is not None else min(self.settings.batching.max_rows, 1000)
        failed = []
        for model in self._built.models.values():
            try:
                model.warm_up(max(1, count))
            except Exception as exc:  # a warm-up must not keep a valid pipeline from serving
                failed.append(f"{model.name}: {type(exc).__name__}: {exc}")
        return failed

    def max_serve_seconds(self, requests: int = 1) -> float:
        """The longest one ``serve_batch`` of ``requests`` requests takes, from the config.

        Each isolation level (``ceil(log2(requests))`` halvings, and the request alone) may
        spend what one request alone can: every step's ``timeout_ms x (retries + 1)`` plus
        its longest backoffs, or two runs of the chain (a failing range and its sibling) if
        that is more. Past it no attempt starts and a running one is abandoned; checks and
        assembling results come on top (milliseconds).
        """
        once = self._worst_case_s[False]
        alone = self._worst_case_s[True]
        return (isolation_levels(requests) + 1) * max(alone, 2 * once)

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
        *,
        should_stop: Callable[[], bool] | None = None,
        keep_alive: Callable[[], None] | None = None,
        groups: frozenset[str] | None = None,
    ) -> BatchResult:
        """Serve one micro-batch: ``table`` holds the requests' rows, conformed (:meth:`conform`,
        or a concatenation of conformed tables), ``row_counts`` their sizes. The segments'
        tables hold the result columns of ``groups`` (:func:`~pipelines.results.groups_for`
        of the requests' datasets), or every column.

        A failing batch is bisected until the failing requests are alone; only a request
        served on its own has its steps retried, so one bad request never fails its
        neighbours. Results come back as contiguous segments of requests. The call ends
        within :meth:`max_serve_seconds`; what isolation leaves untried by then becomes a
        ``step_timeout`` dead letter.

        While a step runs, ``keep_alive`` is called about every 0.5 s and ``should_stop``
        every 50 ms; once it returns true the call returns at once, the requests not yet
        served in ``unserved``. An exception from either hook ends the call and is raised.
        """
        context = StepContext(MappingProxyType(dict(parameters or {})), pipeline=self.name)
        result = BatchResult()
        starts = [0, *itertools.accumulate(row_counts)]
        decode = list(decode_ns) if decode_ns is not None else [0] * len(row_counts)
        budget = self.max_serve_seconds(len(row_counts))
        watch = Watch(budget_s=budget, should_stop=should_stop, keep_alive=keep_alive)
        with watching(watch):
            run = _Run(table, starts, decode, context, result, watch, groups)
            self._serve_range(run, 0, len(row_counts))
        result.unserved.sort()
        return result

    def serve_custom(
        self,
        value: Any,
        parameters: Mapping[str, str] | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        keep_alive: Callable[[], None] | None = None,
    ) -> Any:
        """Run a custom JSON pipeline on one request's JSON value.

        The hooks work as in :meth:`serve_batch`; when ``should_stop`` ends the call it
        raises :class:`Stopped` (the request is unserved).
        """
        context = StepContext(MappingProxyType(dict(parameters or {})), pipeline=self.name)
        watch = Watch(
            budget_s=self.max_serve_seconds(1), should_stop=should_stop, keep_alive=keep_alive
        )
        with watching(watch):
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

    def _serve_range(
        self, run: _Run, first: int, stop: int, depth: int = 0, cause: PipelineError | None = None
    ) -> None:
        """Serve requests ``first..stop-1``; on failure, isolate the failing ones by bisection.

        Once two ranges of one depth have timed out, the steps' time grows with the batch
        rather than with one hanging request, so ranges above that depth are split without
        being tried: timeouts then stay a few per level instead of doubling with each.
        """
        alone = stop - first == 1
        if cause is not None and not alone and depth < run.split_above:
            self._bisect(run, first, stop, depth, cause)
            return
        starts = run.starts
        batch = run.table.slice(starts[first], starts[stop] - starts[first])
        step_ns: list[int] = []
        try:
            run.watch.check()
            frame = self._built.chain.run(
                Frame.start(batch, conformed=self._built.entry_model),
                run.context,
                retry=alone,
                elapsed=step_ns,
            )
        except Stopped:
            run.result.unserved.extend(range(first, stop))
            return
        except PipelineError as exc:
            if isinstance(exc, BudgetSpent):
                exc = run.budget_spent(cause or exc, depth)
            if alone or isinstance(exc, BudgetSpent | Saturated):
                run.result.errors.update(dict.fromkeys(range(first, stop), exc))
                return
            if isinstance(exc, StepTimeout):
                run.timed_out(depth)
            self._bisect(run, first, stop, depth, exc)
            return
        counts = tuple(starts[i + 1] - starts[i] for i in range(first, stop))
        served = assemble(
            frame,
            served_at_ms=self._clock_ns() // 1_000_000,
            version=self.version,
            step_ns=step_ns,
            decode_ns=run.decode_ns[first:stop],
            rows_per_request=counts,
            groups=run.groups,
        )
        run.result.segments.append(
            Segment(first=first, row_counts=counts, table=served, step_ns=tuple(step_ns))
        )

    def _bisect(self, run: _Run, first: int, stop: int, depth: int, cause: PipelineError) -> None:
        middle = (first + stop) // 2
        self._serve_range(run, first, middle, depth + 1, cause)
        self._serve_range(run, middle, stop, depth + 1, cause)


@dataclass(slots=True)
class _Run:
    """One ``serve_batch`` call: the batch, where each request starts, and what came of it."""

    table: pa.Table
    starts: list[int]
    decode_ns: list[int]
    context: StepContext
    result: BatchResult
    watch: Watch
    groups: frozenset[str] | None = None  # the result groups to build; None: all
    timeouts: Counter[int] = field(default_factory=Counter)  # timed-out ranges per depth
    split_above: int = 0  # ranges shallower than this are split without being tried

    def timed_out(self, depth: int) -> None:
        self.timeouts[depth] += 1
        if self.timeouts[depth] == 2:
            self.split_above = max(self.split_above, depth + 1)

    def budget_spent(self, cause: PipelineError, depth: int) -> StepTimeout:
        """The dead letter of requests the time budget left no room to try on their own."""
        requests = len(self.starts) - 1
        return BudgetSpent(
            f"not served: isolating the failing requests of a batch of {requests} spent its "
            f"time budget of {self.watch.budget_s:.3g} s before this request could be served "
            f"on its own (the batch failed with {cause.error_type} in step '{cause.step}': "
            f"{cause.message}); replay it from the dead-letter topic, and if whole batches "
            "time out, raise the step's timeout_ms or lower batching.max_rows",
            step=cause.step,
            attempts=max(1, depth),
        )


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
