"""What the client sends and what it gets back, without Kafka: data to request messages,
reply payloads to results.

The result has the type of the data (SPEC §7): a DataFrame or a pyarrow Table travels as an
Arrow IPC stream and comes back as the same type; JSON (a dict or a list) travels as
pandas-records, or as custom JSON for a pipeline whose first step takes it, and comes back as
the parsed JSON of the result.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from pipelines import formats
from pipelines.config import Settings
from pipelines.errors import DecodeError, OutputError
from pipelines.formats import CONTENT_TYPES, Format
from stream import headers
from stream.errors import InferenceFailed
from stream.types import Headers

__all__ = [
    "Kind",
    "Options",
    "Reply",
    "Request",
    "build_request",
    "decode_reply",
    "is_custom",
    "uniform_kind",
]


class Kind(enum.Enum):
    """What the caller passed, and so what the result is."""

    FRAME = "pandas.DataFrame"
    TABLE = "pyarrow.Table"
    JSON = "JSON"


@dataclass(frozen=True, slots=True)
class Options:
    """A request's result selection and step parameters, as validated header values."""

    dataset: tuple[str, ...] | None = None
    dataset_exclude: tuple[str, ...] | None = None
    dataset_separator: str = "."
    parameters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        parameters: Mapping[str, object] | None = None,
    ) -> Options:
        """Check the keyword arguments of ``infer`` and friends; a ValueError names the problem."""
        if not isinstance(dataset_separator, str) or not dataset_separator:
            raise ValueError(
                f"dataset_separator must be a non-empty string, not {dataset_separator!r}"
            )
        return cls(
            _names("dataset", dataset),
            _names("dataset_exclude", dataset_exclude),
            dataset_separator,
            _parameters(parameters),
        )

    def headers(self) -> Headers:
        """``x-dataset*`` and ``x-param-<name>`` headers; none for what was left at its default."""
        found: list[tuple[str, bytes]] = []
        if self.dataset is not None:
            found.append((headers.DATASET, ",".join(self.dataset).encode()))
        if self.dataset_exclude is not None:
            found.append((headers.DATASET_EXCLUDE, ",".join(self.dataset_exclude).encode()))
        if self.dataset_separator != ".":
            found.append((headers.DATASET_SEPARATOR, self.dataset_separator.encode()))
        found += [(headers.PARAM_PREFIX + name, value.encode()) for name, value in self.parameters]
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Request:
    """An encoded request, ready to send under any request id."""

    payload: bytes
    format: Format
    kind: Kind
    headers: Headers
    rows: int

    def headers_for(self, request_id: str) -> Headers:
        return ((headers.REQUEST_ID, request_id.encode()), *self.headers)


@dataclass(frozen=True, slots=True)
class Reply:
    """A result message's value and ``content-type``."""

    payload: bytes
    content_type: str | None


def is_custom(settings: Settings) -> bool:
    """Whether the pipeline takes custom JSON (its first step is ``accepts: custom-json``)."""
    first = settings.pipeline.steps[0].python
    return first is not None and first.accepts == "custom-json"


def build_request(
    data: Any, options: Options, *, custom: bool, fmt: Format | None = None
) -> Request:
    """Encode ``data`` for a pipeline (``custom``: it takes custom JSON); ``fmt`` forces the
    JSON format (pandas-records or custom JSON) whatever the pipeline takes."""
    extra = options.headers()
    if isinstance(data, pd.DataFrame | pa.Table):
        if custom:
            raise TypeError(
                "this pipeline takes custom JSON: pass a JSON value (dict or list), "
                f"not a {_type_name(data)}"
            )
        table = formats.table_from_pandas(data) if isinstance(data, pd.DataFrame) else data
        if table.num_rows == 0:
            raise ValueError("a request needs at least one row; this one has none")
        payload = formats.encode_request(table, Format.ARROW_STREAM)
        kind = Kind.FRAME if isinstance(data, pd.DataFrame) else Kind.TABLE
        return Request(
            payload, Format.ARROW_STREAM, kind, _typed(Format.ARROW_STREAM, extra), len(table)
        )
    fmt = fmt or (Format.CUSTOM if custom else Format.PANDAS_RECORDS)
    if fmt is Format.PANDAS_RECORDS:
        if not isinstance(data, dict | list):
            raise TypeError(
                "infer takes a pandas.DataFrame, a pyarrow.Table or JSON (dict or list), "
                f"not {_type_name(data)}"
            )
        if not data:
            raise ValueError("a request needs at least one row; this one has none")
    try:
        payload = formats.encode_value(data)
    except OutputError as exc:
        raise TypeError(f"cannot send {_type_name(data)} as JSON: {exc.message}") from exc
    rows = len(data) if isinstance(data, list) and fmt is Format.PANDAS_RECORDS else 1
    return Request(payload, fmt, Kind.JSON, _typed(fmt, extra), rows)


def decode_reply(reply: Reply, request: Request, request_id: str) -> Any:
    """The result of ``request`` in the type of its data; a broken reply is InferenceFailed."""
    fmt = request.format
    try:
        named = formats.format_for_content_type(reply.content_type)
        if request.kind is Kind.JSON:
            return formats.decode_response(reply.payload, Format.CUSTOM)
        table = formats.decode_response(reply.payload, named or fmt)
    except DecodeError as exc:
        raise InferenceFailed(
            "decode_error", f"the result is unreadable: {exc}", request_id
        ) from exc
    if not isinstance(table, pa.Table):
        raise InferenceFailed("decode_error", "the result is not a table", request_id)
    return formats.table_to_pandas(table) if request.kind is Kind.FRAME else table


def uniform_kind(items: Sequence[object]) -> Kind | None:
    """FRAME or TABLE when every item is one; None for no items; else a ValueError."""
    kinds = {Kind.FRAME if isinstance(i, pd.DataFrame) else Kind.TABLE for i in items}
    others = sorted({_type_name(i) for i in items if not isinstance(i, pd.DataFrame | pa.Table)})
    if others or len(kinds) > 1:
        found = sorted({_type_name(i) for i in items})
        raise ValueError(
            "parallel_infer takes a list of pandas.DataFrame or a list of pyarrow.Table, all "
            f"of one type; got {', '.join(found)}"
        )
    return kinds.pop() if kinds else None


def _typed(fmt: Format, extra: Headers) -> Headers:
    return ((headers.CONTENT_TYPE, CONTENT_TYPES[fmt].encode()), *extra)


def _names(what: str, value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = []
    for item in items:
        if not isinstance(item, str) or "," in item:
            raise ValueError(f"{what} takes column or group names without commas, not {item!r}")
        if item.strip():
            names.append(item.strip())
    return tuple(names)


def _parameters(parameters: Mapping[str, object] | None) -> tuple[tuple[str, str], ...]:
    if parameters is None:
        return ()
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be a mapping of names to values, not {parameters!r}")
    found = []
    for name, value in parameters.items():
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"parameter names must be non-empty printable strings, not {name!r}")
        found.append((name, value if isinstance(value, str) else _json_text(name, value)))
    return tuple(sorted(found))


def _json_text(name: str, value: object) -> str:
    """A parameter value that is not a string travels as its JSON text."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError as exc:
        raise ValueError(f"parameter {name!r}: a string or a JSON value, not {value!r}") from exc


def _type_name(value: object) -> str:
    kind = type(value)
    package = kind.__module__.split(".")[0]
    return kind.__name__ if package == "builtins" else f"{package}.{kind.__name__}"
