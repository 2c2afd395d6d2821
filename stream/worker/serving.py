"""Serve stage: a micro-batch of decoded requests becomes one outcome per request."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from pipelines import Pipeline, formats
from pipelines.errors import PipelineError
from pipelines.formats import CONTENT_TYPES, Format
from pipelines.pipeline import Segment
from pipelines.results import select
from stream.headers import result_headers
from stream.ops.metrics import Metrics, NullMetrics
from stream.types import DeadLetter, Outcome, Result
from stream.worker.decoding import Decoded

__all__ = ["Server"]


class Server:
    """Runs the pipeline on a batch and encodes each request's rows in the request's format."""

    def __init__(self, pipeline: Pipeline, metrics: Metrics | None = None) -> None:
        self.pipeline = pipeline
        self._metrics = metrics or NullMetrics()

    def serve(self, requests: Sequence[Decoded]) -> list[Outcome]:
        """One outcome per request, in the order given."""
        if requests[0].format is Format.CUSTOM:
            return [self._serve_custom(request) for request in requests]
        outcomes: dict[int, Outcome] = {}
        table, served = self._batch_table(requests, outcomes)
        if served:
            batch = self.pipeline.serve_batch(
                table,
                [request.rows for request in served],
                dict(served[0].parameters),
                [request.decode_ns for request in served],
            )
            for index, error in batch.errors.items():
                outcomes[id(served[index])] = DeadLetter(served[index].envelope, error)
            for segment in batch.segments:
                self._metrics.steps(self.pipeline.step_names, segment.step_ns)
                members = [served[index] for index in segment.requests]
                outcomes.update(self._encode(segment, members))
        return [outcomes[id(request)] for request in requests]

    def _batch_table(
        self, requests: Sequence[Decoded], outcomes: dict[int, Outcome]
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
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Same columns, types that do not unify (e.g. a column of nulls): serve them apart.
            for request, table in zip(good[1:], tables[1:], strict=True):
                outcomes.update(self._serve_alone(request, table))
            return tables[0], good[:1]

    def _join(self, requests: Sequence[Decoded]) -> pa.Table:
        if requests[0].records is not None:
            table = formats.table_from_requests([r.records or [] for r in requests])
            return self.pipeline.conform(table)
        tables = [request.table for request in requests]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def _serve_alone(self, request: Decoded, table: pa.Table) -> dict[int, Outcome]:
        batch = self.pipeline.serve_batch(
            table, [request.rows], dict(request.parameters), [request.decode_ns]
        )
        if batch.errors:
            return {id(request): DeadLetter(request.envelope, batch.errors[0])}
        return self._encode(batch.segments[0], [request])

    def _encode(self, segment: Segment, members: Sequence[Decoded]) -> dict[int, Outcome]:
        """Encode a served segment; requests sharing format and selection are encoded at once."""
        outcomes: dict[int, Outcome] = {}
        groups: dict[tuple[Format, object], list[int]] = {}
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
                if isinstance(payload, PipelineError):
                    outcomes[id(request)] = DeadLetter(request.envelope, payload)
                else:
                    outcomes[id(request)] = self._result(request, payload)
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
        except PipelineError as exc:
            if len(members) == 1:
                return [exc]
        # isolate the request whose rows cannot be encoded
        results: list[bytes | PipelineError] = []
        offset = 0
        for member, count in zip(members, row_counts, strict=True):
            results += self._encode_many(table.slice(offset, count), [member], [count])
            offset += count
        return results

    def _serve_custom(self, request: Decoded) -> Outcome:
        try:
            value = self.pipeline.serve_custom(request.value, dict(request.parameters))
            payload = formats.encode_value(value)
        except PipelineError as exc:
            return DeadLetter(request.envelope, exc)
        return self._result(request, payload)

    def _result(self, request: Decoded, payload: bytes) -> Result:
        content_type = CONTENT_TYPES[request.format]
        return Result(
            request.envelope,
            payload,
            result_headers(
                request.envelope,
                content_type=content_type,
                pipeline=self.pipeline.name,
                version=self.pipeline.version,
            ),
            request.rows,
        )
