"""Decode stage: a consumed message becomes a request ready to batch, or a dead letter.

Isolation (SPEC §5) starts here: whatever a message holds, :class:`Decoder` returns a
:class:`Decoded` or a :class:`DeadLetter`, never an exception. :func:`stage` is the boundary
that the serve stage shares: inside it, any exception that is not already a
:class:`PipelineError` becomes the error type of the stage it broke, with a message naming it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines import Pipeline, formats
from pipelines.config import ProcessingSettings
from pipelines.errors import (
    DecodeError,
    Expired,
    OutputError,
    PipelineError,
    SchemaError,
    StepError,
    TooLarge,
)
from pipelines.formats import Format, JsonValue
from stream import headers
from stream.types import DeadLetter, Envelope, Headers
from stream.worker.deadlines import expired, parse_deadline
from stream.worker.tracing import child

__all__ = ["Decoded", "Decoder", "Selection", "failure", "stage"]

_STAGES: dict[type[PipelineError], str] = {
    DecodeError: "decoding the request",
    SchemaError: "conforming the request to the model's inputs",
    StepError: "serving the request",
    OutputError: "encoding the result",
}
_EARLY = (DecodeError, SchemaError)  # stages where running out of memory means too large


def failure(exc: Exception, kind: type[PipelineError]) -> PipelineError:
    """``exc`` as a request's dead-letter error, raised in the stage whose errors are ``kind``.

    A :class:`PipelineError` is already one. Anything else becomes ``kind`` with a message
    naming the exception's type and text; a :class:`MemoryError` while decoding or conforming
    becomes :class:`TooLarge`, since it is the request's size that the worker could not hold.
    """
    if isinstance(exc, PipelineError):
        return exc
    what = _STAGES.get(kind, kind.error_type)
    message = f"{what} failed: {type(exc).__name__}: {_describe(exc)}"
    error = TooLarge(message) if isinstance(exc, MemoryError) and kind in _EARLY else kind(message)
    error.__cause__ = exc
    return error


@contextmanager
def stage(kind: type[PipelineError]) -> Iterator[None]:
    """Run one stage of a request: an exception escaping it is raised as :func:`failure` gives."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:  # isolation (SPEC §5): any exception, not only the library's
        raise failure(exc, kind) from exc


def _describe(exc: Exception) -> str:
    """An exception's text, printable and valid UTF-8 whatever its ``__str__`` does."""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises is still named by its type
        text = "(its message cannot be printed)"
    return text.encode("utf-8", "replace").decode("utf-8")


Parameters = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which result columns a request asked for (``x-dataset*`` headers, else the config)."""

    dataset: tuple[str, ...]
    exclude: tuple[str, ...]
    separator: str = "."


@dataclass(slots=True, eq=False)  # not frozen: a frozen dataclass's __init__ costs ~1 µs more
class Decoded:
    """A request that decoded: a table (Arrow, OIP), JSON rows (pandas-records) or a value.
    Treat it as immutable; it is compared by identity."""

    envelope: Envelope
    format: Format
    rows: int
    selection: Selection
    table: pa.Table | None = None
    records: list[dict[str, JsonValue]] | None = None
    value: JsonValue = None
    oip_id: str | None = None
    parameters: Parameters = ()
    decode_ns: int = 0
    trace: tuple[bytes, int] | None = None  # the worker's traceparent for it, and its span id

    @property
    def batch_key(self) -> Hashable:
        """Requests with equal keys can share a micro-batch."""
        if self.table is not None:
            return ("table", self.table.schema, self.parameters)
        if self.records is not None:
            # value types too: an int column must not turn float because a batch-mate sent 1.5
            kinds = tuple(map(type, self.records[0].values()))
            return ("records", formats.records_signature(self.records), kinds, self.parameters)
        return ("custom", self.envelope.partition, self.envelope.offset)


@dataclass(slots=True, eq=False)
class _Request:
    """What every format family shares: the envelope, its headers read once, the start time."""

    envelope: Envelope
    content_type: str | None
    selection: Selection
    parameters: Parameters
    started_ns: int
    trace: tuple[bytes, int] | None

    def done(
        self,
        fmt: Format,
        rows: int,
        *,
        table: pa.Table | None = None,
        records: list[dict[str, JsonValue]] | None = None,
        value: JsonValue = None,
        oip_id: str | None = None,
        parameters: Parameters | None = None,
    ) -> Decoded:
        """The decoded request, timed from ``started_ns``; its own parameters by default."""
        return Decoded(  # positional: one is made per request
            self.envelope,
            fmt,
            rows,
            self.selection,
            table,
            records,
            value,
            oip_id,
            self.parameters if parameters is None else parameters,
            time.perf_counter_ns() - self.started_ns,
            self.trace,
        )


@dataclass(slots=True, eq=False)  # not frozen: one is made for each new set of headers
class _Plan:
    """What a set of request headers says, read once for every request that carries the same:
    a stream's requests mostly share theirs (a content type, perhaps a dataset selection)."""

    deadline: int | None  # x-deadline, epoch ms
    content_type: str | None
    format: Format | None
    unknown_format: str | None  # why the content type is not one headrace reads
    selection: Selection
    parameters: Parameters
    traceparent: bytes | None


class Decoder:
    """Turns envelopes into :class:`Decoded` requests; what cannot be served is a dead letter.

    A request past its deadline (``x-deadline``, or ``processing.max_request_age_ms`` after its
    Kafka timestamp, by ``wall_clock_ms``) is an ``expired`` dead letter before its payload is
    read: a backlog nobody waits for drains at the speed of the transport.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        processing: ProcessingSettings,
        max_request_bytes: int,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._pipeline = pipeline
        self._custom = pipeline.is_custom
        self._default = Selection(processing.dataset, processing.dataset_exclude)
        self._max_bytes = max_request_bytes
        self._limits = formats.Limits(processing.max_request_rows, processing.max_decoded_bytes)
        self._max_age_ms = processing.max_request_age_ms
        self._wall_clock_ms = wall_clock_ms
        self._plans: dict[Headers, _Plan] = {}

    def __call__(self, envelope: Envelope) -> Decoded | DeadLetter:
        """The decoded request, or its dead letter; no exception escapes."""
        try:
            return self._decode(envelope, time.perf_counter_ns())
        except Exception as exc:  # isolation (SPEC §5): whatever the bytes hold
            return DeadLetter(envelope, failure(exc, DecodeError))

    def _decode(self, envelope: Envelope, started: int) -> Decoded:
        size = len(envelope.value)
        if size > self._max_bytes:
            raise TooLarge(
                f"request of {size} bytes is over the limit of {self._max_bytes} bytes "
                "(kafka.max_message_bytes)"
            )
        plan = self._plans.get(envelope.headers) or self._plan(envelope.headers)
        if plan.deadline is not None or self._max_age_ms is not None:
            late = expired(
                plan.deadline, envelope.timestamp_ms, self._max_age_ms, self._wall_clock_ms()
            )
            if late is not None:
                raise Expired(late)
        if plan.unknown_format is not None:
            raise DecodeError(plan.unknown_format)
        fmt = plan.format
        request = _Request(
            envelope,
            plan.content_type,
            plan.selection,
            plan.parameters,
            started,
            None if plan.traceparent is None else child(plan.traceparent),
        )
        if self._custom:
            return self._custom_json(request, fmt)
        if fmt is Format.CUSTOM:
            raise DecodeError(
                f"pipeline '{self._pipeline.name}' takes tables (Arrow, pandas-records or OIP); "
                "custom JSON needs a pipeline whose first step accepts custom-json"
            )
        if fmt is Format.PANDAS_RECORDS or (fmt is None and _is_records(envelope.value)):
            return self._records(request)
        return self._table(request)

    def _custom_json(self, request: _Request, fmt: Format | None) -> Decoded:
        """Any JSON value, for a pipeline whose first step takes custom JSON."""
        if fmt not in (None, Format.CUSTOM, Format.PANDAS_RECORDS):
            raise DecodeError(
                f"pipeline '{self._pipeline.name}' takes custom JSON; got {request.content_type}"
            )
        decoded = formats.decode(
            request.envelope.value, request.content_type, custom=True, limits=self._limits
        )
        if decoded.format is not Format.CUSTOM:  # sniffed Arrow, or format=pandas-records
            raise DecodeError(
                f"pipeline '{self._pipeline.name}' takes custom JSON; "
                f"got {formats.CONTENT_TYPES[decoded.format]}"
            )
        return request.done(Format.CUSTOM, 1, value=decoded.value)

    def _records(self, request: _Request) -> Decoded:
        """pandas-records JSON rows, parsed now and conformed with their micro-batch."""
        records = formats.parse_records(request.envelope.value, self._limits)
        return request.done(Format.PANDAS_RECORDS, len(records), records=records)

    def _table(self, request: _Request) -> Decoded:
        """An Arrow IPC stream or file, or an OIP request: a table conformed to the model."""
        decoded = formats.decode(request.envelope.value, request.content_type, limits=self._limits)
        assert decoded.table is not None
        with stage(SchemaError):
            table = self._pipeline.conform(decoded.table)
            hash(table.schema)  # the batcher keys on it: a schema that cannot be hashed fails here
        parameters = request.parameters
        if decoded.parameters:
            parameters = _merge(parameters, decoded.parameters)
        return request.done(
            decoded.format,
            table.num_rows,
            table=table,
            oip_id=decoded.oip_id,
            parameters=parameters,
        )

    def _plan(self, found_headers: Headers) -> _Plan:
        """What ``found_headers`` say about a request; an error when they cannot be served.

        The plan is kept for the requests that repeat the same headers, unless they hold a
        value that is each request's own (its id, deadline or trace context) or many bytes.
        """
        found = {key.lower(): value for key, value in found_headers}
        if headers.UNREADABLE_HEADERS in found:
            raise DecodeError(_text(found[headers.UNREADABLE_HEADERS]) or "unreadable headers")
        deadline = found.get(headers.DEADLINE)
        content_type = _text(found.get(headers.CONTENT_TYPE))
        fmt, unknown = None, None
        try:
            fmt = formats.format_for_content_type(content_type)
        except DecodeError as exc:  # raised once the request is known not to have expired
            unknown = str(exc)
        known = found.keys() & _KNOWN  # most requests carry no others
        plan = _Plan(
            None if deadline is None else parse_deadline(deadline),
            content_type,
            fmt,
            unknown,
            self._default if known.isdisjoint(_SELECTION) else self._selection(found),
            _parameters(found_headers) if len(known) < len(found) else (),
            found.get(headers.TRACEPARENT),
        )
        if known.isdisjoint(_PER_REQUEST) and (
            sum(len(value) for _, value in found_headers) <= _MAX_PLAN_BYTES
        ):
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[found_headers] = plan
        return plan

    def _selection(self, found: dict[str, bytes]) -> Selection:
        dataset = _text(found.get(headers.DATASET))
        exclude = _text(found.get(headers.DATASET_EXCLUDE))
        separator = _text(found.get(headers.DATASET_SEPARATOR))
        if dataset is None and exclude is None and separator is None:
            return self._default
        return Selection(
            _split(dataset) if dataset is not None else self._default.dataset,
            _split(exclude) if exclude is not None else self._default.exclude,
            separator or ".",
        )


_MAX_PLANS = 256  # distinct sets of request headers whose reading is kept ...
_MAX_PLAN_BYTES = 2048  # ... when their values hold at most this many bytes
_PER_REQUEST = frozenset((headers.REQUEST_ID, headers.DEADLINE, headers.TRACEPARENT))
_SELECTION = frozenset((headers.DATASET, headers.DATASET_EXCLUDE, headers.DATASET_SEPARATOR))
_KNOWN = _SELECTION | {  # request headers that are not step parameters (x-param-*)
    headers.CONTENT_TYPE,
    headers.REQUEST_ID,
    headers.DEADLINE,
    headers.TRACEPARENT,
    headers.TRACESTATE,
}


def _is_records(payload: bytes) -> bool:
    """Sniffed JSON that is not an OIP request (an object with an ``inputs`` list)."""
    head = payload[:64].lstrip()
    if head.startswith(b"["):
        return True
    return head.startswith(b"{") and b'"inputs"' not in payload


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


_PREFIX = headers.PARAM_PREFIX


def _parameters(found: Headers) -> Parameters:
    return tuple(
        sorted(
            (key[len(_PREFIX) :], value.decode("utf-8", errors="replace"))
            for key, value in found
            if key.lower().startswith(_PREFIX)
        )
    )


def _merge(parameters: Parameters, extra: Any) -> Parameters:
    merged = {
        k: v if isinstance(v, str) else formats.encode_value(v).decode()
        for k, v in dict(extra).items()
    }
    merged.update(dict(parameters))
    return tuple(sorted(merged.items()))


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
