"""Serve stage: a micro-batch of decoded requests becomes one outcome per request.

Isolation (SPEC §5): :meth:`Server.serve` never raises. Each stage of a batch (joining the
requests' rows, running the pipeline, encoding each result) runs inside
:func:`~stream.worker.decoding.stage`, so an unexpected exception carries its stage's error
type; one that fails the batch as a whole makes the batch bisect until the request that
raises it is alone, and that request alone is dead-lettered.

A server may be given the worker's ``should_stop`` and ``keep_alive`` hooks (see
:meth:`pipelines.Pipeline.serve_batch`): once ``should_stop`` says so, the requests not yet
served come back as ``None`` — neither result nor dead letter, so their offsets stay
uncommitted and they are served again after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa

from pipelines import Pipeline, formats
from pipelines.errors import DecodeError, OutputError, PipelineError, SchemaError, StepError
from pipelines.formats import CONTENT_TYPES, Format
from pipelines.pipeline import Segment
from pipelines.results import groups_for, select
from pipelines.runner import Stopped
from stream.headers import result_headers
from stream.ops.metrics import Metrics, NullMetrics
from stream.types import DeadLetter, Outcome, Result
from stream.worker.decoding import Decoded, failure, stage

__all__ = ["Server"]


def _groups(requests: Sequence[Decoded]) -> frozenset[str] | None:
    """The result groups the requests' datasets can select: only those are built."""
    selections = {id(request.selection): request.selection for request in requests}
    found: set[str] = set()
    for selection in selections.values():
        groups = groups_for(selection.dataset)
        if groups is None:
            return None
        found |= groups
    return frozenset(found)


class Server:
    """Runs the pipeline on a batch and encodes each request's rows in the request's format."""

    def __init__(
        self,
        pipeline: Pipeline,
        metrics: Metrics | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
        keep_alive: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self._metrics = metrics or NullMetrics()
        self._should_stop = should_stop
        self._keep_alive = keep_alive
        self._last_segments: Sequence[Segment] = ()  # of the last batch served

    @property
    def step_seconds(self) -> dict[str, float]:
        """Each step's time in the last batch served (for its trace span)."""
        seconds = dict.fromkeys(self.pipeline.step_names, 0.0)
        for segment in self._last_segments:
            for name, ns in zip(self.pipeline.step_names, segment.step_ns, strict=False):
                seconds[name] += ns / 1e9
        return seconds

    def serve(self, requests: Sequence[Decoded]) -> list[Outcome | None]:
        """One outcome per request, in the order given (``None``: left unserved because the
        worker is stopping); whatever the requests hold, no exception."""
        if not requests:
            return []
        try:
            return self._serve(requests)
        except Exception as exc:  # isolation (SPEC §5): whatever failed the batch as a whole
            if len(requests) == 1:
                return [DeadLetter(requests[0].envelope, failure(exc, StepError))]
        middle = len(requests) // 2
        return self.serve(requests[:middle]) + self.serve(requests[middle:])

    def _serve(self, requests: Sequence[Decoded]) -> list[Outcome | None]:
        if requests[0].format is Format.CUSTOM:
            return self._serve_custom_each(requests)
        outcomes: dict[int, Outcome | None] = {}
        table, served = self._batch_table(requests, outcomes)
        if served:
            with stage(StepError):
                batch = self.pipeline.serve_batch(
                    table,
                    [request.rows for request in served],
                    dict(served[0].parameters),
                    [request.decode_ns for request in served],
                    should_stop=self._should_stop,
                    keep_alive=self._keep_alive,
                    groups=_groups(served),
                )
            for index in batch.unserved:
                outcomes[id(served[index])] = None
            for index, error in batch.errors.items():
                outcomes[id(served[index])] = DeadLetter(served[index].envelope, error)
            self._last_segments = batch.segments
            for segment in batch.segments:
                self._metrics.steps(self.pipeline.step_names, segment.step_ns)
                members = [served[index] for index in segment.requests]
                outcomes.update(self._encode(segment, members))
        return [outcomes[id(request)] for request in requests]

    def _batch_table(
        self, requests: Sequence[Decoded], outcomes: dict[int, Outcome | None]
    ) -> tuple[pa.Table, list[Decoded]]:
        """The batch's rows as one conformed table, and the requests in it.

        Requests that cannot join (a decode or schema error) become dead letters; when the
        fast path fails, each request is tried on its own to find them.
        """
        try:
            return self._join(requests), list(requests)
        except PipelineError:
            pass
        good: list[Decoded] = []
        tables: list[pa.Table] = []
        for request in requests:
            try:
                tables.append(self._join([request]))
                good.append(request)
            except PipelineError as exc:
                outcomes[id(request)] = DeadLetter(request.envelope, exc)
        if not tables:
            return pa.table({}), []
        try:
            return pa.concat_tables(tables, promote_options="permissive"), good
        except pa.ArrowException:
            # Same columns, types that do not unify (e.g. a column of nulls): serve them apart.
            for request, table in zip(good[1:], tables[1:], strict=True):
                outcomes.update(self._serve_alone(request, table))
            return tables[0], good[:1]

    def _join(self, requests: Sequence[Decoded]) -> pa.Table:
        if requests[0].records is not None:
            with stage(DecodeError):
                table = formats.table_from_requests([r.records or [] for r in requests])
            with stage(SchemaError):
                return self.pipeline.conform(table)
        tables = [request.table for request in requests]
        with stage(SchemaError):
            return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _serve_alone(self, request: Decoded, table: pa.Table) -> dict[int, Outcome | None]:
        with stage(StepError):
            batch = self.pipeline.serve_batch(
                table,
                [request.rows],
                dict(request.parameters),
                [request.decode_ns],
                should_stop=self._should_stop,
                keep_alive=self._keep_alive,
                groups=_groups([request]),
            )
        if batch.unserved:
            return {id(request): None}
        if batch.errors:
            return {id(request): DeadLetter(request.envelope, batch.errors[0])}
        return self._encode(batch.segments[0], [request])

    def _encode(self, segment: Segment, members: Sequence[Decoded]) -> dict[int, Outcome | None]:
        """Encode a served segment; requests sharing format and selection are encoded at once."""
        outcomes: dict[int, Outcome | None] = {}
        first = members[0]
        groups: dict[tuple[Format, object], list[int]] = {}
        if all(m.format is first.format and m.selection is first.selection for m in members):
            groups[first.format, first.selection] = list(range(len(members)))  # the usual case
        else:
            for position, request in enumerate(members):
                groups.setdefault((request.format, request.selection), []).append(position)
        for positions in groups.values():
            if len(positions) == len(members):
                payloads = self._encode_many(segment.table, members, segment.row_counts)
            else:
                payloads = [
                    self._encode_many(
                        segment.request_table(segment.first + p),
                        [members[p]],
                        (segment.row_counts[p],),
                    )[0]
                    for p in positions
                ]
            for position, payload in zip(positions, payloads, strict=True):
                request = members[position]
                outcomes[id(request)] = self._outcome(request, payload)
        return outcomes

    def _encode_many(
        self, table: pa.Table, members: Sequence[Decoded], row_counts: Sequence[int]
    ) -> list[bytes | PipelineError]:
        first = members[0]
        try:
            selected = select(
                table, first.selection.dataset, first.selection.exclude, first.selection.separator
            )
            return list(
                formats.encode_many(
                    selected,
                    first.format,
                    row_counts,
                    oip_ids=[m.oip_id for m in members],
                    model_name=self.pipeline.name,
                    model_version=self.pipeline.version,
                )
            )
        except Exception as exc:  # isolation (SPEC §5): any failure to encode
            if len(members) == 1:
                return [failure(exc, OutputError)]
        # isolate the request whose rows cannot be encoded
        results: list[bytes | PipelineError] = []
        offset = 0
        for member, count in zip(members, row_counts, strict=True):
            results += self._encode_many(table.slice(offset, count), [member], [count])
            offset += count
        return results

    def _serve_custom_each(self, requests: Sequence[Decoded]) -> list[Outcome | None]:
        """Custom JSON requests one by one; once stopped, the rest are left unserved."""
        outcomes: list[Outcome | None] = []
        for request in requests:
            try:
                outcomes.append(self._serve_custom(request))
            except Stopped:
                break
        return outcomes + [None] * (len(requests) - len(outcomes))

    def _serve_custom(self, request: Decoded) -> Outcome:
        try:
            with stage(StepError):
                value = self.pipeline.serve_custom(
                    request.value,
                    dict(request.parameters),
                    should_stop=self._should_stop,
                    keep_alive=self._keep_alive,
                )
            payload = formats.encode_value(value)
        except Exception as exc:  # isolation (SPEC §5): a step error, or an encoding one
            return DeadLetter(request.envelope, failure(exc, OutputError))
        return self._outcome(request, payload)

    def _outcome(self, request: Decoded, payload: bytes | PipelineError) -> Outcome:
        """The request's result with its headers, or its dead letter."""
        if isinstance(payload, PipelineError):
            return DeadLetter(request.envelope, payload)
        try:
            found = result_headers(
                request.envelope,
                content_type=CONTENT_TYPES[request.format],
                pipeline=self.pipeline.name,
                version=self.pipeline.version,
                traceparent=None if request.trace is None else request.trace[0],
            )
        except Exception as exc:  # isolation (SPEC §5): no header text fails the worker
            return DeadLetter(request.envelope, failure(exc, OutputError))
        return Result(request.envelope, payload, found, request.rows)
