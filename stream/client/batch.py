"""``BatchInferenceClient``: a large frame served as many small requests, a few at a time.

    with stream.BatchInferenceClient("configs/ccfraud.yaml") as batch:
        scored = batch.run(frame, batch_size=50, executors=4)
    scored = stream.BatchInferenceClient(model_id="ccfraud").run(frame, batch_size=50)  # Qwak's

Rows come back in input order. A request that fails (dead letter or timeout) does not stop the
run unless ``fail_fast``: its rows carry the failure in an ``error`` column instead.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, TypeAlias, TypeVar

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from pipelines import formats
from stream.client import wire
from stream.client.client import Client, Pending, connect
from stream.client.deployments import Deployment
from stream.closing import Closing
from stream.errors import InferenceFailed, InferenceTimeout

__all__ = ["ERROR_COLUMN", "BatchInferenceClient", "assemble", "split_rows"]

ERROR_COLUMN = "error"
DEFAULT_TIMEOUT_S = 15.0
Answer: TypeAlias = "pa.Table | InferenceFailed | InferenceTimeout"  # one request's
Frame = TypeVar("Frame", pd.DataFrame, pa.Table)  # what run() takes, it gives back
RESOURCE_ARGUMENTS = ("cpus", "gpu_type", "gpus", "memory", "iam_role_arn")
"""Qwak's run() arguments that size its pods; a headrace deployment's config does that."""


class BatchInferenceClient(Closing):
    """Runs frames through a deployment in ``batch_size``-row requests, ``executors`` in flight.

    ``config`` is a deployment (YAML path, settings, or a deployment name), connected here and
    closed by ``close``, or an open :class:`Client`, which is left open. ``model_id`` names the
    deployment as Qwak's does; with neither, ``$HEADRACE_MODEL_ID`` does.
    """

    def __init__(
        self,
        config: Deployment | Client | None = None,
        *,
        model_id: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if config is not None and model_id is not None:
            raise TypeError("pass a config or a model_id, not both")
        if isinstance(config, Client):
            self.client, self._owned = config, False
        else:
            deployment = config if config is not None else model_id
            self.client = connect(deployment, connect_timeout=connect_timeout)
            self._owned = True

    def run(  # noqa: PLR0917  # Qwak's signature, positional order included
        self,
        df: Frame,
        batch_size: int = 50,
        executors: int = 1,
        cpus: object = None,
        gpu_type: object = None,
        gpus: object = None,
        memory: object = None,
        iam_role_arn: object = None,
        parameters: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
        fail_fast: bool = False,
    ) -> Frame:
        """Every row of ``df`` with its result columns, in input order (a Table for a Table).

        ``timeout`` bounds each request (default 15 s) and sets its ``x-deadline``. Without
        ``fail_fast`` the rows of a failed request carry its error message in an ``error``
        column (present only when something failed) and the other rows are served; with it,
        the first failure raises its InferenceFailed or InferenceTimeout. Qwak's resource
        arguments (``cpus``, ``gpu_type``, ``gpus``, ``memory``, ``iam_role_arn``) are accepted
        in Qwak's order and ignored with one warning: a headrace deployment's resources live in
        its config.
        """
        given = {"cpus": cpus, "gpu_type": gpu_type, "gpus": gpus, "memory": memory}
        _warn_ignored({**given, "iam_role_arn": iam_role_arn})
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
        if isinstance(df, pd.DataFrame):
            return formats.table_to_pandas(result)
        return result

    def close(self) -> None:
        """Close the client if this object connected it."""
        if self._owned:
            self.client.close()


def split_rows(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, count)`` of each request: ``batch_size`` rows, the last one what is left."""
    _check_positive("batch_size", batch_size)
    return [(start, min(batch_size, rows - start)) for start in range(0, rows, batch_size)]


def assemble(outcomes: Sequence[Answer], spans: Sequence[tuple[int, int]]) -> pa.Table:
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
    ) -> list[Answer]:
        outcomes: list[Answer | None] = [None] * len(spans)
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
                    self._send(sent, spans[sent], outcomes, timeout)
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

    def _send(
        self, index: int, span: tuple[int, int], outcomes: list[Answer | None], timeout: float
    ) -> None:
        request = wire.build_request(self.table.slice(*span), self.options, custom=False)
        try:
            pending = self.client.send(request, timeout=timeout)
        except InferenceFailed as exc:  # refused before it left (too large)
            if self.fail_fast:
                raise
            outcomes[index] = exc
            return
        self.inflight[pending.future] = (index, pending)

    def _finished(self, timeout: float) -> list[tuple[int, Answer]]:
        """Wait for a request to end (or the oldest to time out); what ended, by index."""
        if not self.inflight:
            return []
        oldest = min(pending.sent_at for _, pending in self.inflight.values())
        done, _ = wait(
            list(self.inflight),
            timeout=max(0.0, oldest + timeout - self.client.clock()),
            return_when=FIRST_COMPLETED,
        )
        ended: list[tuple[int, Answer]] = []
        for future in done:
            index, pending = self.inflight.pop(future)
            ended.append((index, _outcome(pending)))
        now = self.client.clock()
        for future, (index, pending) in list(self.inflight.items()):
            if now - pending.sent_at >= timeout:
                del self.inflight[future]
                ended.append((index, self.client.abandon(pending, timeout)))
        return ended


def _outcome(pending: Pending) -> Answer:
    try:
        result: Any = pending.result()
    except (InferenceFailed, InferenceTimeout) as exc:
        return exc
    assert isinstance(result, pa.Table)
    return result


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _warn_ignored(resources: Mapping[str, object]) -> None:
    ignored = [name for name in RESOURCE_ARGUMENTS if resources.get(name) is not None]
    if ignored:
        warnings.warn(
            f"BatchInferenceClient.run ignores {', '.join(ignored)}: a headrace deployment's "
            "resources are set by its config (replicas: worker processes; a model step's "
            "providers: CPU or CUDA) and by where its workers run (deploy/kubernetes resources)",
            UserWarning,
            stacklevel=3,
        )
