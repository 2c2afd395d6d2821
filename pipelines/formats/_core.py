"""The vocabulary of the wire formats: the formats, their content types, a decoded request."""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import TypeAlias

import orjson
import pyarrow as pa

from pipelines.errors import DecodeError, TooLarge

__all__ = [
    "CONTENT_TYPES",
    "UNLIMITED",
    "Format",
    "JsonValue",
    "Limits",
    "Request",
    "format_for_content_type",
    "json_type_name",
    "load_json",
    "parse_content_type",
]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
"""A parsed JSON document: what ``orjson.loads`` returns."""


class Format(enum.StrEnum):
    """A wire format of a request or a result (SPEC §3)."""

    ARROW_STREAM = "arrow-stream"
    ARROW_FILE = "arrow-file"
    PANDAS_RECORDS = "pandas-records"
    OIP = "oip"
    CUSTOM = "custom-json"


CONTENT_TYPES: Mapping[Format, str] = MappingProxyType(
    {
        Format.ARROW_STREAM: "application/vnd.apache.arrow.stream",
        Format.ARROW_FILE: "application/vnd.apache.arrow.file",
        Format.PANDAS_RECORDS: "application/json; format=pandas-records",
        Format.OIP: "application/json; format=oip",
        Format.CUSTOM: "application/json; format=custom",
    }
)
"""The ``content-type`` header value of each format, as headrace writes it."""

_JSON = "application/json"
_MEDIA_TYPES = {
    "application/vnd.apache.arrow.stream": Format.ARROW_STREAM,
    "application/vnd.apache.arrow.file": Format.ARROW_FILE,
}
_JSON_FORMATS = {
    "pandas-records": Format.PANDAS_RECORDS,
    "oip": Format.OIP,
    "custom": Format.CUSTOM,
    "custom-json": Format.CUSTOM,
}


def _no_parameters() -> Mapping[str, JsonValue]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request: a table of rows, or, for custom JSON, the parsed value.

    ``oip_id`` and ``parameters`` carry an OIP request's ``id`` and ``parameters`` so that the
    response can echo the id; other formats leave them empty.
    """

    format: Format
    table: pa.Table | None = None
    value: JsonValue = None
    oip_id: str | None = None
    parameters: Mapping[str, JsonValue] = field(default_factory=_no_parameters)


@dataclass(frozen=True, slots=True)
class Limits:
    """How large a request may be once decoded: rows, and bytes after decompression.

    A request over either bound is a :class:`TooLarge` raised before its rows are allocated;
    the message names the bound, the size asked for and the config key that sets it.
    """

    max_rows: int = sys.maxsize
    max_bytes: int = sys.maxsize

    def check(self, what: str, rows: int, nbytes: int) -> None:
        """Refuse ``what`` when ``rows`` or ``nbytes`` passes a bound."""
        if rows > self.max_rows:
            raise TooLarge(
                f"{what} has {rows} rows, over the limit of {self.max_rows} rows "
                "(processing.max_request_rows)"
            )
        if nbytes > self.max_bytes:
            raise TooLarge(
                f"{what} decodes to {nbytes} bytes, over the limit of {self.max_bytes} bytes "
                "(processing.max_decoded_bytes)"
            )


UNLIMITED = Limits()
"""No bound: for results a client reads back, and for callers that bound requests themselves."""


def format_for_content_type(content_type: str | None) -> Format | None:
    """The format a ``content-type`` header names; ``None`` when there is none (sniff).

    Case and whitespace around ``;`` and ``=`` do not matter; plain ``application/json`` is
    pandas-records; other parameters (``charset``) are ignored. An unknown type is a
    :class:`DecodeError` that lists the accepted ones.
    """
    fmt, _ = parse_content_type(content_type)
    return fmt


@lru_cache(maxsize=64)
def parse_content_type(content_type: str | None) -> tuple[Format | None, bool]:
    """The format of a ``content-type`` and whether it was plain JSON without a ``format``."""
    if not content_type or not content_type.strip():
        return None, False
    media_type, *params = (part.strip() for part in content_type.lower().split(";"))
    if media_type in _MEDIA_TYPES:
        return _MEDIA_TYPES[media_type], False
    if media_type == _JSON:
        options = dict(_parameter(param) for param in params if param)
        if "format" not in options:
            return Format.PANDAS_RECORDS, True
        if options["format"] in _JSON_FORMATS:
            return _JSON_FORMATS[options["format"]], False
    accepted = ", ".join(repr(value) for value in CONTENT_TYPES.values())
    raise DecodeError(
        f"unsupported content-type {content_type!r}: use one of {accepted}, "
        "or send no content-type to have the payload sniffed"
    )


def _parameter(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip(), value.strip().strip('"')


def load_json(payload: bytes) -> JsonValue:
    """Parse JSON, or raise a :class:`DecodeError` that says where it stops being JSON."""
    try:
        value: JsonValue = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(
            f"not valid JSON at byte {_byte_offset(payload, exc.pos)}: {exc.msg}"
        ) from exc
    return value


def _byte_offset(payload: bytes, char_offset: int) -> int:
    """orjson reports a character offset; users see bytes."""
    try:
        return len(payload.decode("utf-8")[:char_offset].encode("utf-8"))
    except UnicodeDecodeError:
        return char_offset


def json_type_name(value: JsonValue) -> str:
    """How JSON would call a parsed value's type, with an article: ``a number``, ``an object``."""
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case _:
            return "an object"
