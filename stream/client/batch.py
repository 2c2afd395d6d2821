"""``BatchInferenceClient``: a large frame served as many small requests, a few at a time.

    with stream.BatchInferenceClient("configs/ccfraud.yaml") as batch:
        scored = batch.run(frame, batch_size=50, executors=4)

Rows come back in input order. A request that fails (dead letter or timeout) does not stop the
run unless ``fail_fast``: its rows carry the failure in an ``error`` column instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from types import TracebackType
from typing import Any, Self, TypeAlias, overload

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from pipelines import formats
from pipelines.config import Settings
from stream.client import wire
from stream.client.client import Client, Pending, connect
from stream.errors import InferenceFailed, InferenceTimeout

__all__ = ["ERROR_COLUMN", "BatchInferenceClient", "assemble", "split_rows"]

ERROR_COLUMN = "error"
DEFAULT_TIMEOUT_S = 15.0
Outcome: TypeAlias = "pa.Table | InferenceFailed | InferenceTimeout"


class BatchInferenceClient:
    """Runs frames through a deployment in ``batch_size``-row requests, ``executors`` in flight.

    ``config`` is a deployment (YAML path or settings), connected here and closed by
    ``close``, or an open :class:`Client`, which is left open.
    """

    def __init__(
        self, config: str | os.PathLike[str] | Settings | Client, *, connect_timeout: float = 10.0
    ) -> None:
        if isinstance(config, Client):
            self.client, self._owned = config, False
        else:
            self.client, self._owned = connect(config, connect_timeout=connect_timeout), True

    @overload
    def run(
        self,
        df: pd.DataFrame,
        batch_size: int = ...,
        executors: int = ...,
        *,
        parameters: Mapping[str, object] | None = ...,
        timeout: float | None = ...,
        fail_fast: bool = ...,
    ) -> pd.DataFrame: ...

    @overload
    def run(
        self,
        df: pa.Table,
        batch_size: int = ...,
        executors: int = ...,
        *,
        parameters: Mapping[str, object] | None = ...,
        timeout: float | None = ...,
        fail_fast: bool = ...,
    ) -> pa.Table: ...

    def run(
        self,
        df: pd.DataFrame | pa.Table,
        batch_size: int = 50,
        executors: int = 1,
        *,
        parameters: Mapping[str, object] | None = None,
        timeout: float | None = None,
        fail_fast: bool = False,
    ) -> pd.DataFrame | pa.Table:
        """Every row of ``df`` with its result columns, in input order (a Table for a Table).

        ``timeout`` bounds each request (default 15 s). Without ``fail_fast`` the rows of a
        failed request carry its error message in an ``error`` column (present only when
        something failed) and the other rows are served; with it, the first failure raises
        its InferenceFailed or InferenceTimeout.
        """
        _check_positive("batch_size", batch_size)
        _check_positive("executors", executors)
        if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        if isinstance(df, pd.DataFrame):
            table = formats.table_from_pandas(df)
        elif isinstance(df, pa.Table):
            table = df
        else:
            raise TypeError(
                f"run takes a pandas.DataFrame or a pyarrow.Table, not {type(df).__name__}"
            )
        if self.client.custom:
            raise TypeError("this pipeline takes custom JSON; use Client.infer for each value")
        run = _Run(self.client, table, wire.Options.of(parameters=parameters), fail_fast)
        spans = split_rows(table.num_rows, batch_size)
        result = assemble(run.serve(spans, executors, timeout or DEFAULT_TIMEOUT_S), spans)
        return formats.table_to_pandas(result) if isinstance(df, pd.DataFrame) else result

    def close(self) -> None:
        """Close the client if this object connected it."""
        if self._owned:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def split_rows(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each request: ``batch_size`` rows, the last one what is left."""
    _check_positive("batch_size", batch_size)
    return [(start, min(batch_size, rows - start)) for start in range(0, rows, batch_size)]


def assemble(outcomes: Sequence[Outcome], spans: Sequence[tuple[int, int]]) -> pa.Table:
    """The requests' results in order; failed requests' rows are nulls with an ``error``."""
    tables = [outcome for outcome in outcomes if isinstance(outcome, pa.Table)]
    if len(tables) == len(outcomes):
        return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    schema = (
        pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
        if tables
        else pa.schema([])
    )
    pieces = []
    for outcome, (_, count) in zip(outcomes, spans, strict=True):
        if isinstance(outcome, pa.Table):
            error = pa.nulls(count, pa.string())
            pieces.append(outcome.append_column(ERROR_COLUMN, error))
        else:
            columns = {field.name: pa.nulls(count, field.type) for field in schema}
            columns[ERROR_COLUMN] = pa.array([str(outcome)] * count, pa.string())
            pieces.append(pa.table(columns))
    return pa.concat_tables(pieces, promote_options="permissive")


class _Run:
    """One ``run``: a window of at most ``executors`` requests in flight, refilled as they end."""

    def __init__(self, client: Client, table: pa.Table, options: wire.Options, fail_fast: bool):
        self.client = client
        self.table = table
        self.options = options
        self.fail_fast = fail_fast
        self.inflight: dict[Future[wire.Reply], tuple[int, Pending]] = {}

    def serve(
        self, spans: Sequence[tuple[int, int]], executors: int, timeout: float
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(spans)
        progress = tqdm(
            total=self.table.num_rows,
            unit="rows",
            desc=self.client.settings.pipeline.name,
            disable=not sys.stderr.isatty(),
        )
        sent = 0
        try:
            while sent < len(spans) or self.inflight:
                while sent < len(spans) and len(self.inflight) < executors:
                    self._send(sent, spans[sent], outcomes)
                    sent += 1
                for index, outcome in self._finished(timeout):
                    outcomes[index] = outcome
                    progress.update(spans[index][1])
                    if self.fail_fast and not isinstance(outcome, pa.Table):
                        raise outcome
        finally:
            progress.close()
            for _, pending in self.inflight.values():
                self.client.abandon(pending, timeout)
        return [outcome for outcome in outcomes if outcome is not None]

    def _send(self, index: int, span: tuple[int, int], outcomes: list[Outcome | None]) -> None:
        request = wire.build_request(self.table.slice(*span), self.options, custom=False)
        try:
            pending = self.client.send(request)
        except InferenceFailed as exc:  # refused before it left (too large)
            if self.fail_fast:
                raise
            outcomes[index] = exc
            return
        self.inflight[pending.future] = (index, pending)

    def _finished(self, timeout: float) -> list[tuple[int, Outcome]]:
        """Wait for a request to end (or the oldest to time out); what ended, by index."""
        if not self.inflight:
            return []
        oldest = min(pending.sent_at for _, pending in self.inflight.values())
        done, _ = wait(
            list(self.inflight),
            timeout=max(0.0, oldest + timeout - self.client.clock()),
            return_when=FIRST_COMPLETED,
        )
        ended: list[tuple[int, Outcome]] = []
        for future in done:
            index, pending = self.inflight.pop(future)
            ended.append((index, _outcome(pending)))
        now = self.client.clock()
        for future, (index, pending) in list(self.inflight.items()):
            if now - pending.sent_at >= timeout:
                del self.inflight[future]
                ended.append((index, self.client.abandon(pending, timeout)))
        return ended


def _outcome(pending: Pending) -> Outcome:
    try:
        result: Any = pending.result()
    except (InferenceFailed, InferenceTimeout) as exc:
        return exc
    assert isinstance(result, pa.Table)
    return result


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
