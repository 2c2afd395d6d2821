"""Decode stage: a consumed message becomes a request ready to batch, or a dead letter."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines import Pipeline, formats
from pipelines.config import ProcessingSettings
from pipelines.errors import DecodeError, PipelineError, TooLarge
from pipelines.formats import Format, JsonValue
from stream import headers
from stream.types import DeadLetter, Envelope

__all__ = ["Decoded", "Decoder", "Selection"]

Parameters = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which result columns a request asked for (``x-dataset*`` headers, else the config)."""

    dataset: tuple[str, ...]
    exclude: tuple[str, ...]
    separator: str = "."


@dataclass(frozen=True, slots=True)
class Decoded:
    """A request that decoded: a table (Arrow, OIP), JSON rows (pandas-records) or a value."""

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

    @property
    def batch_key(self) -> Hashable:
        """Requests with equal keys can share a micro-batch."""
        if self.table is not None:
            return ("table", self.table.schema, self.parameters)
        if self.records is not None:
            # value types too: an int column must not turn float because a batch-mate sent 1.5
            first = self.records[0]
            kinds = tuple(type(value).__name__ for value in first.values())
            return ("records", formats.records_signature(self.records), kinds, self.parameters)
        return ("custom", self.envelope.partition, self.envelope.offset)


class Decoder:
    """Turns envelopes into :class:`Decoded` requests; what cannot be served is a dead letter."""

    def __init__(
        self, pipeline: Pipeline, processing: ProcessingSettings, max_request_bytes: int
    ) -> None:
        self._pipeline = pipeline
        self._custom = pipeline.is_custom
        self._default = Selection(processing.dataset, processing.dataset_exclude)
        self._max_bytes = max_request_bytes

    def __call__(self, envelope: Envelope) -> Decoded | DeadLetter:
        try:
            return self._decode(envelope, time.perf_counter_ns())
        except PipelineError as exc:
            return DeadLetter(envelope, exc)

    def _decode(self, envelope: Envelope, started: int) -> Decoded:
        size = len(envelope.value)
        if size > self._max_bytes:
            raise TooLarge(
                f"request of {size} bytes is over the limit of {self._max_bytes} bytes "
                "(kafka.max_message_bytes)"
            )
        found = envelope.header_map() if envelope.headers else {}
        content_type = _text(found.get(headers.CONTENT_TYPE))
        fmt = formats.format_for_content_type(content_type)
        parameters = _parameters(envelope) if any(k.startswith(_PREFIX) for k in found) else ()
        selection = self._selection(found) if found else self._default
        if self._custom:
            if fmt not in (None, Format.CUSTOM, Format.PANDAS_RECORDS):
                raise DecodeError(
                    f"pipeline '{self._pipeline.name}' takes custom JSON; got {content_type}"
                )
            request = formats.decode(envelope.value, content_type, custom=True)
            if request.format is not Format.CUSTOM:  # sniffed Arrow, or format=pandas-records
                raise DecodeError(
                    f"pipeline '{self._pipeline.name}' takes custom JSON; "
                    f"got {formats.CONTENT_TYPES[request.format]}"
                )
            return Decoded(
                envelope,
                Format.CUSTOM,
                1,
                selection,
                value=request.value,
                parameters=parameters,
                decode_ns=time.perf_counter_ns() - started,
            )
        if fmt is Format.CUSTOM:
            raise DecodeError(
                f"pipeline '{self._pipeline.name}' takes tables (Arrow, pandas-records or OIP); "
                "custom JSON needs a pipeline whose first step accepts custom-json"
            )
        if fmt is Format.PANDAS_RECORDS or (fmt is None and _is_records(envelope.value)):
            records = formats.parse_records(envelope.value)
            return Decoded(
                envelope,
                Format.PANDAS_RECORDS,
                len(records),
                selection,
                records=records,
                parameters=parameters,
                decode_ns=time.perf_counter_ns() - started,
            )
        request = formats.decode(envelope.value, content_type)
        assert request.table is not None
        table = self._pipeline.conform(request.table)
        if request.parameters:
            parameters = _merge(parameters, request.parameters)
        return Decoded(
            envelope,
            request.format,
            table.num_rows,
            selection,
            table=table,
            oip_id=request.oip_id,
            parameters=parameters,
            decode_ns=time.perf_counter_ns() - started,
        )

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


def _is_records(payload: bytes) -> bool:
    """Sniffed JSON that is not an OIP request (an object with an ``inputs`` list)."""
    head = payload[:64].lstrip()
    if head.startswith(b"["):
        return True
    return head.startswith(b"{") and b'"inputs"' not in payload


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="replace")


_PREFIX = headers.PARAM_PREFIX


def _parameters(envelope: Envelope) -> Parameters:
    return tuple(
        sorted(
            (key[len(_PREFIX) :], value.decode("utf-8", errors="replace"))
            for key, value in envelope.headers
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
