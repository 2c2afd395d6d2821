"""Requests and envelopes for the worker tests: ccfraud rows in every wire format."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pyarrow as pa

from pipelines import formats
from pipelines.formats import CONTENT_TYPES, Format
from stream.types import Envelope, Headers, Partition

REPO = Path(__file__).resolve().parents[3]
CCFRAUD = REPO / "configs" / "ccfraud.yaml"
FORECAST = REPO / "configs" / "forecast.yaml"
_SMOKE: list[float] = json.loads((REPO / "data" / "smoke_test.df.json").read_bytes())[0]["tensor"]
TOPIC = "requests"


def tensor(seed: int = 0, width: int = 29) -> list[float]:
    """A ccfraud feature vector (the smoke test row, shifted by ``seed``), ``width`` long."""
    return [round(value + seed * 0.25, 4) for value in _SMOKE[:width]]


def records(*tensors: list[float]) -> bytes:
    """A pandas-records request with one row per tensor."""
    return orjson.dumps([{"tensor": values} for values in tensors])


def table(*tensors: list[float]) -> pa.Table:
    """A ccfraud request table with one row per tensor and an ``id`` column to echo."""
    return pa.table(
        {
            "tensor": pa.array(list(tensors), pa.list_(pa.float32())),
            "id": pa.array(range(len(tensors)), pa.int64()),
        }
    )


def encoded(data: pa.Table, fmt: Format, **options: object) -> bytes:
    """``data`` as a client sends it in ``fmt``."""
    return formats.encode_request(data, fmt, **options)  # type: ignore[arg-type]


def content_type(fmt: Format) -> tuple[str, bytes]:
    """The ``content-type`` header of ``fmt``."""
    return ("content-type", CONTENT_TYPES[fmt].encode())


def envelope(
    value: bytes,
    headers: Headers = (),
    *,
    offset: int = 0,
    partition: int = 0,
    key: bytes | None = b"key",
    topic: str = TOPIC,
    timestamp_ms: int = 1_700_000_000_000,
) -> Envelope:
    """A consumed request."""
    return Envelope(Partition(topic, partition), offset, key, value, headers, timestamp_ms)


def header(headers: Headers, name: str) -> str | None:
    """The value of header ``name`` as text (the last one when repeated)."""
    found = None
    for key, value in headers:
        if key == name:
            found = value.decode()
    return found
