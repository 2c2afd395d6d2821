"""The demo's sample requests: the files in ``data/`` in every request format, plus bad ones.

A pipeline gets the samples of its input: ccfraud-style (a ``tensor`` of 29 floats), digits-style
(an 8x8 ``image``) or custom JSON (the forecast example). Each sample names itself in
``x-request-id`` (and its key), so results and dead letters can be told apart. One ccfraud
sample is a good request whose ``x-deadline`` has passed before it is sent: the worker
dead-letters it as ``expired`` without running it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa

from pipelines import Pipeline
from pipelines.config import Settings
from pipelines.errors import ConfigError
from pipelines.formats import CONTENT_TYPES, Format, encode_request
from stream import headers
from stream.types import Headers

__all__ = ["DEMO_PIPELINES", "Sample", "find_project", "samples_for"]

DEMO_PIPELINES = ("ccfraud", "digits", "forecast")
_CHECKOUT = Path(__file__).resolve().parents[2]  # the source tree of an editable install
_NEEDED = ("configs", "data")
_STREAM_REQUESTS = 10  # the Arrow file's rows, sent again as this many Arrow stream requests
_PAST_MS = 1_000  # the late sample's deadline: this long before its samples were made


@dataclass(frozen=True, slots=True)
class Sample:
    """One request to send: its id (also the key), bytes, content type and expected rows;
    ``deadline_ms`` is its ``x-deadline`` (epoch ms), if any."""

    request_id: str
    value: bytes
    content_type: str | None
    rows: int
    malformed: bool = False
    deadline_ms: int | None = None

    @property
    def key(self) -> bytes:
        return self.request_id.encode()

    @property
    def headers(self) -> Headers:
        given: Headers = ((headers.REQUEST_ID, self.key),)
        if self.content_type is not None:
            given = (*given, (headers.CONTENT_TYPE, self.content_type.encode()))
        if self.deadline_ms is not None:
            given = (*given, (headers.DEADLINE, str(self.deadline_ms).encode()))
        return given

    @property
    def late(self) -> bool:
        """Sent after its deadline on purpose: the worker dead-letters it as expired."""
        return self.deadline_ms is not None and self.deadline_ms < _now_ms()

    @property
    def format(self) -> str:
        """How the request is encoded, for the report: a format name or ``sniffed``."""
        for fmt, content_type in CONTENT_TYPES.items():
            if content_type == self.content_type:
                return str(fmt)
        return "sniffed"


def find_project(explicit: Path | None = None) -> Path:
    """The folder holding the demo's ``configs/``, ``models/`` and ``data/``.

    ``explicit`` (``headrace demo --project DIR``) when given; else the current directory when
    it has them (a checkout, or ``/app`` in the image); else the source checkout of an editable
    install. A folder without them is a ConfigError naming the path it looked at.
    """
    candidates = [explicit] if explicit is not None else [Path.cwd(), _CHECKOUT]
    for folder in candidates:
        if all((folder / name).is_dir() for name in _NEEDED):
            return folder.resolve()
    looked = " or ".join(str(folder.resolve()) for folder in candidates)
    raise ConfigError(
        f"no demo configs and sample data in {looked} (it needs configs/, models/ and data/): "
        "run `headrace demo` from a headrace checkout (or /app in the image), or pass "
        "--project DIR"
    )


def samples_for(settings: Settings, data_dir: Path) -> list[Sample]:
    """The sample requests for the pipeline of ``settings``; the first one is the warm-up."""
    kind = _input_kind(settings)
    if kind == "custom":
        return _forecast_samples(data_dir)
    if kind == "image":
        return _digits_samples(data_dir)
    return _ccfraud_samples(data_dir)


def _input_kind(settings: Settings) -> str:
    first = settings.pipeline.steps[0]
    if first.python is not None and first.python.accepts == "custom-json":
        return "custom"
    if settings.pipeline.name in {"ccfraud", "heavy", "digits"}:
        return "image" if settings.pipeline.name == "digits" else "tensor"
    schema = Pipeline(settings).input_schema
    names = set() if schema is None else set(schema.names)
    for kind in ("tensor", "image"):
        if kind in names:
            return kind
    raise ConfigError(
        f"{settings.source}: the demo has no sample requests for pipeline "
        f"'{settings.pipeline.name}' (input columns {sorted(names)}); it sends a 'tensor' of "
        "29 floats, an 8x8 'image' or custom JSON. Try `headrace infer CONFIG --file F` instead."
    )


def _ccfraud_samples(data: Path) -> list[Sample]:
    arrow_file = (data / "ccfraud_1k.arrow").read_bytes()
    table = pa.ipc.open_file(pa.py_buffer(arrow_file)).read_all()
    step = table.num_rows // _STREAM_REQUESTS
    streams = [
        _sample(
            f"arrow-stream-{index + 1:02d}", table.slice(index * step, step), Format.ARROW_STREAM
        )
        for index in range(_STREAM_REQUESTS)
    ]
    json_type = CONTENT_TYPES[Format.PANDAS_RECORDS]
    short = orjson.dumps([{"tensor": [0.5] * 28}])
    smoke = (data / "smoke_test.df.json").read_bytes()
    return [
        Sample("smoke-test", smoke, json_type, 1),
        Sample("arrow-file-1k", arrow_file, CONTENT_TYPES[Format.ARROW_FILE], table.num_rows),
        *streams,
        Sample("high-fraud", (data / "high_fraud.df.json").read_bytes(), json_type, 1),
        _sample("oip-3-rows", table.slice(0, 3), Format.OIP),
        Sample("garbage-bytes", b"\x00\x9f garbage, not a request \xfe", None, 0, malformed=True),
        Sample("tensor-28-floats", short, json_type, 0, malformed=True),
        Sample("wrong-shape-json", b'{"tensor": "29 floats"}', json_type, 0, malformed=True),
        Sample("deadline-passed", smoke, json_type, 0, deadline_ms=_now_ms() - _PAST_MS),
    ]


def _digits_samples(data: Path) -> list[Sample]:
    arrow_file = (data / "digits_100.arrow").read_bytes()
    table = pa.ipc.open_file(pa.py_buffer(arrow_file)).read_all()
    quarter = table.num_rows // 4
    streams = [
        _sample(
            f"arrow-stream-{index + 1}", table.slice(index * quarter, quarter), Format.ARROW_STREAM
        )
        for index in range(4)
    ]
    flat = orjson.dumps([{"image": [0.0] * 64}])
    json_type = CONTENT_TYPES[Format.PANDAS_RECORDS]
    return [
        Sample("arrow-file-100", arrow_file, CONTENT_TYPES[Format.ARROW_FILE], table.num_rows),
        *streams,
        Sample("flat-image-64", flat, json_type, 0, malformed=True),
    ]


def _forecast_samples(data: Path) -> list[Sample]:
    custom = CONTENT_TYPES[Format.CUSTOM]
    return [
        Sample("forecast-4-weeks", (data / "forecast.json").read_bytes(), custom, 1),
        Sample("three-days-only", b'{"count": [185, 195, 203]}', custom, 0, malformed=True),
    ]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _sample(request_id: str, table: pa.Table, fmt: Format) -> Sample:
    value = encode_request(table, fmt, oip_id=request_id if fmt is Format.OIP else None)
    return Sample(request_id, value, CONTENT_TYPES[fmt], table.num_rows)
