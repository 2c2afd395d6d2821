"""Wire formats of requests and results (SPEC §3, §4): Arrow IPC stream and file,
pandas-records JSON, Open Inference Protocol v2 JSON and custom JSON.

``decode`` turns a message payload into a :class:`Request` (a table, or a JSON value for custom
JSON); ``encode`` turns a result table into the bytes of the request's format. A micro-batch of
small pandas-records requests takes the batch path: ``parse_records`` each, ``records_signature``
to group them, ``table_from_requests`` once; ``encode_many`` gives one payload per request. The
client side is ``encode_request`` and ``decode_response``. Undecodable bytes raise
:class:`~pipelines.errors.DecodeError`, unencodable results :class:`~pipelines.errors.OutputError`,
each with a message that names what to fix; a request that would decode to more rows or bytes
than its :class:`Limits` allow raises :class:`~pipelines.errors.TooLarge` before it is allocated.
"""

from pipelines.formats._codec import (
    decode,
    decode_response,
    encode,
    encode_many,
    encode_request,
    encode_value,
    table_from_records,
)
from pipelines.formats._core import (
    CONTENT_TYPES,
    Format,
    JsonValue,
    Limits,
    Request,
    format_for_content_type,
)
from pipelines.formats._pandas import table_from_pandas, table_to_pandas
from pipelines.formats._records import parse_records, records_signature, table_from_requests

__all__ = [
    "CONTENT_TYPES",
    "Format",
    "JsonValue",
    "Limits",
    "Request",
    "decode",
    "decode_response",
    "encode",
    "encode_many",
    "encode_request",
    "encode_value",
    "format_for_content_type",
    "parse_records",
    "records_signature",
    "table_from_pandas",
    "table_from_records",
    "table_from_requests",
    "table_to_pandas",
]
