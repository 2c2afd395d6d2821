"""The headers of SPEC §3-5: what a request may carry, what results and dead letters carry."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from pipelines.errors import PipelineError
from stream.types import Envelope, Headers, Partition

__all__ = [
    "CONTENT_TYPE",
    "DEADLINE",
    "DROPPED_HEADERS",
    "ERROR_HEADERS",
    "ERROR_MESSAGE",
    "ERROR_STEP",
    "ERROR_TYPE",
    "ERROR_TYPES",
    "ORIGINAL_BYTES",
    "REPLAYED_FROM",
    "REQUEST_ID",
    "TRACEPARENT",
    "TRACESTATE",
    "UNREADABLE_HEADERS",
    "dead_letter_headers",
    "result_headers",
]

CONTENT_TYPE = "content-type"
REQUEST_ID = "x-request-id"
PARAM_PREFIX = "x-param-"
DATASET = "x-dataset"
DATASET_EXCLUDE = "x-dataset-exclude"
DATASET_SEPARATOR = "x-dataset-separator"
DEADLINE = "x-deadline"  # epoch ms after which the caller no longer wants the answer
TRACEPARENT = "traceparent"  # W3C Trace Context: outcomes carry it with the worker's span id
TRACESTATE = "tracestate"  # W3C Trace Context: passed through unchanged
ERROR_TYPE = "x-error-type"
ERROR_MESSAGE = "x-error-message"
ERROR_STEP = "x-error-step"
ORIGINAL_BYTES = "x-original-bytes"  # on a dead letter published without its value
DROPPED_HEADERS = "x-dropped-headers"  # how many request headers a dead letter left out
REPLAYED_FROM = "x-replayed-from"  # on a request that ``headrace dlq replay`` re-published
# set by the consumer on a message whose header names cannot be read: the decoder refuses it
UNREADABLE_HEADERS = "x-headrace-unreadable-headers"
ERROR_TYPES = (  # the values of x-error-type (SPEC §5)
    "decode_error",
    "schema_error",
    "step_error",
    "step_timeout",
    "output_error",
    "too_large",
    "expired",
)
ERROR_HEADERS = (
    ERROR_TYPE,
    ERROR_MESSAGE,
    ERROR_STEP,
    "x-attempts",
    "x-source-topic",
    "x-source-partition",
    "x-source-offset",
    "x-source-timestamp",
    "x-consumer-group",
    "x-failed-at",
)
_RESULT_HEADERS = (
    "x-pipeline",
    "x-pipeline-version",
    "x-source-topic",
    "x-source-partition",
    "x-source-offset",
)
_CONSUMED = {CONTENT_TYPE, REQUEST_ID, DATASET, DATASET_EXCLUDE, DATASET_SEPARATOR}
_REPLACED_ON_RESULT = _CONSUMED | set(_RESULT_HEADERS)
MAX_MESSAGE_HEADER = 4096


def _utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate (an undecodable byte kept by Python) becomes ``?``."""
    return text.encode("utf-8", "replace")


def _name(key: str) -> str:
    """A header name the producer can encode, whatever bytes it was read from."""
    return key if key.isascii() else _utf8(key).decode("utf-8")


def result_headers(
    envelope: Envelope,
    *,
    content_type: str,
    pipeline: str,
    version: str,
    traceparent: bytes | None = None,
) -> Headers:
    """Headers of a result: identity, provenance, then the request's pass-through headers
    (its ``traceparent`` replaced by ``traceparent``, the worker's, when given).

    One pass over the request's headers finds its ``x-request-id`` and what passes through:
    this runs once per result.
    """
    shared, position = _provenance(content_type, pipeline, version, envelope.partition)
    offset = b"%d" % envelope.offset
    if not envelope.headers:
        return ((REQUEST_ID, position + offset), *shared, ("x-source-offset", offset))
    given = None
    kept: list[tuple[str, bytes]] = []
    for key, value in envelope.headers:
        lowered = key.lower()
        if lowered == REQUEST_ID:
            given = value  # the last one counts, as in Envelope.header
        elif lowered not in _REPLACED_ON_RESULT and not lowered.startswith(PARAM_PREFIX):
            ours = traceparent if lowered == TRACEPARENT and traceparent is not None else None
            kept.append((_name(key), value if ours is None else ours))
    return (
        (REQUEST_ID, _request_id(given) if given else position + offset),
        *shared,
        ("x-source-offset", offset),
        *kept,
    )


def _request_id(given: bytes) -> bytes:
    """An ``x-request-id`` value as UTF-8."""
    if given.isascii():
        return given
    return _utf8(given.decode("utf-8", errors="replace"))


@functools.lru_cache(maxsize=1024)
def _provenance(
    content_type: str, pipeline: str, version: str, partition: Partition
) -> tuple[Headers, bytes]:
    """The headers every result of one format, pipeline version and source partition shares,
    and its requests' position (:attr:`Envelope.position`) less the offset."""
    headers = (
        (CONTENT_TYPE, _utf8(content_type)),
        ("x-pipeline", _utf8(pipeline)),
        ("x-pipeline-version", _utf8(version)),
        ("x-source-topic", _utf8(partition.topic)),
        ("x-source-partition", b"%d" % partition.index),
    )
    return headers, _utf8(f"{partition.topic}:{partition.index}:")


def dead_letter_headers(
    envelope: Envelope, error: PipelineError, *, group_id: str, failed_at_ms: int
) -> Headers:
    """The request's own headers plus the ``x-error-*`` and ``x-source-*`` ones of SPEC §5."""
    partition = envelope.partition
    own = tuple((_name(k), v) for k, v in envelope.headers if k.lower() not in ERROR_HEADERS)
    failed_at = datetime.fromtimestamp(failed_at_ms / 1000, tz=UTC)
    return (
        *own,
        (ERROR_TYPE, _utf8(error.error_type)),
        (ERROR_MESSAGE, _clip(_utf8(str(error.message)))),
        (ERROR_STEP, _utf8(error.step or "")),
        ("x-attempts", str(error.attempts).encode()),
        ("x-source-topic", _utf8(partition.topic)),
        ("x-source-partition", str(partition.index).encode()),
        ("x-source-offset", str(envelope.offset).encode()),
        ("x-source-timestamp", str(envelope.timestamp_ms).encode()),
        ("x-consumer-group", _utf8(group_id)),
        ("x-failed-at", failed_at.isoformat(timespec="milliseconds").encode()),
    )


def _clip(message: bytes) -> bytes:
    """At most :data:`MAX_MESSAGE_HEADER` bytes, cut on a character boundary."""
    if len(message) <= MAX_MESSAGE_HEADER:
        return message
    head = message[: MAX_MESSAGE_HEADER - 3].decode("utf-8", errors="ignore")
    return head.encode() + b"..."
