"""Arrow IPC stream and file payloads, read only once their decoded size is known to fit.

A record batch says in its metadata how many rows it has and where its buffers lie in the
message body; a compressed buffer (LZ4 frame or ZSTD) starts with its length once
decompressed. So the decoded size of a payload is known from a few bytes of each message,
before Arrow allocates anything: :func:`read_arrow` sums it, refuses what passes the
:class:`~pipelines.formats._core.Limits`, and only then reads the table. The metadata is a
flatbuffer (Arrow's ``Message.fbs`` and ``File.fbs``), walked here by hand with every read
bounds-checked, so a mutated payload is a :class:`DecodeError`, never an out-of-range read.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Iterator

import pyarrow as pa

from pipelines.errors import DecodeError
from pipelines.formats._core import UNLIMITED, Format, Limits

__all__ = ["read_arrow"]

_NAMES = {Format.ARROW_STREAM: "stream", Format.ARROW_FILE: "file"}
_FILE_MAGIC = b"ARROW1"
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3  # MessageHeader union tags
_PAIR = struct.Struct("<qq")  # FieldNode {length, null_count}; Buffer {offset, length}
_BLOCK = struct.Struct("<qi4xq")  # File.fbs Block {offset, metaDataLength, bodyLength}
_UNCOMPRESSED = -1  # a compressed body's buffer prefix when that buffer was left as is


class _CorruptError(Exception):
    """Metadata that points outside its bytes or holds impossible sizes."""


def read_arrow(payload: bytes, fmt: Format, limits: Limits = UNLIMITED) -> pa.Table:
    """The table in an Arrow IPC payload, its size checked against ``limits`` before reading.

    The columns stay views of ``payload`` where they are not compressed; every column is
    validated in full, so a corrupt offset is a :class:`DecodeError` here, not a bad read later.
    """
    buffer = pa.py_buffer(payload)
    name = _NAMES[fmt]
    try:
        if fmt is Format.ARROW_FILE:
            messages = list(_file_messages(buffer))
        else:
            messages = list(pa.ipc.MessageReader.open_stream(buffer))
        rows, nbytes = _decoded_size(messages)
    except (pa.ArrowException, OSError, EOFError, _CorruptError) as exc:
        raise _corrupt(payload, name, exc) from exc
    limits.check(f"Arrow IPC {name}", rows, nbytes)
    try:
        if fmt is Format.ARROW_FILE:
            table = pa.ipc.open_file(buffer).read_all()
        else:
            table = _stream_table(messages)
            if table is None:
                table = pa.ipc.open_stream(buffer).read_all()
        _check_names(table.schema)
        table.validate(full=True)
    except (pa.ArrowException, OSError, EOFError) as exc:
        raise _corrupt(payload, name, exc) from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"Arrow IPC {name} has a column name that is not UTF-8: {exc}") from exc
    return table


def _stream_table(messages: list[pa.ipc.Message]) -> pa.Table | None:
    """The table of a stream's messages, read as they were sized (not parsed again); None
    for a stream with dictionaries or of an unusual shape, which the stream reader reads."""
    if not messages or messages[0].type != "schema":
        return None
    if any(message.type != "record batch" for message in messages[1:]):
        return None
    schema = pa.ipc.read_schema(messages[0])
    batches = [pa.ipc.read_record_batch(message, schema) for message in messages[1:]]
    return pa.Table.from_batches(batches, schema)


def _check_names(fields: Iterable[pa.Field]) -> None:
    """Read every field name, nested ones too: Arrow decodes them only when asked."""
    for field in fields:
        field.name  # noqa: B018 - raises UnicodeDecodeError for a name that is not UTF-8
        children = field.type
        if children.num_fields:
            _check_names(children.field(index) for index in range(children.num_fields))


def _corrupt(payload: bytes, name: str, exc: BaseException) -> DecodeError:
    return DecodeError(f"truncated or corrupt Arrow IPC {name} ({len(payload)} bytes): {exc}")


def _decoded_size(messages: Iterable[pa.ipc.Message]) -> tuple[int, int]:
    """Rows of the record batches, and bytes of every batch's buffers once decompressed.

    A value with no buffer of its own (a null column) still counts a byte, so a batch of
    billions of nulls is as large as it will be once cast.
    """
    rows = nbytes = 0
    for message in messages:
        batch_rows, batch_bytes = _batch_size(message)
        rows += batch_rows
        nbytes += batch_bytes
    return rows, nbytes


def _batch_size(message: pa.ipc.Message) -> tuple[int, int]:
    if message.type == "schema":
        return 0, 0  # a schema message has no body to size
    meta = _Table.root(memoryview(message.metadata))
    kind = meta.scalar(1, "<B")
    header = meta.table(2)
    if kind == _DICTIONARY_BATCH and header is not None:
        batch = header.table(1)
    elif kind == _RECORD_BATCH:
        batch = header
    else:
        return 0, 0
    if batch is None:
        raise _CorruptError("a batch message without its batch")
    length = batch.scalar(0, "<q")
    nodes = batch.pairs(1)
    buffers = batch.pairs(2)
    if length < 0 or any(size < 0 for pair in nodes + buffers for size in pair):
        raise _CorruptError("a negative length or offset in a batch's metadata")
    body = memoryview(message.body) if message.body is not None else memoryview(b"")
    compressed = batch.table(3) is not None
    stored = sum(_buffer_size(body, offset, size, compressed) for offset, size in buffers)
    values = sum(node_length for node_length, _ in nodes)
    return (length if kind == _RECORD_BATCH else 0), max(stored, values)


def _buffer_size(body: memoryview, offset: int, size: int, compressed: bool) -> int:
    """A buffer's size in memory: a compressed one says so in its first 8 bytes."""
    if offset + size > len(body):
        raise _CorruptError(f"a buffer at {offset}..{offset + size} of a {len(body)}-byte body")
    if not compressed or size == 0:
        return size
    (decompressed,) = _read(body, "<q", offset)
    if decompressed == _UNCOMPRESSED:
        return size - 8
    if decompressed < 0:
        raise _CorruptError(f"a compressed buffer claims {decompressed} bytes")
    return int(decompressed)


def _file_messages(buffer: pa.Buffer) -> Iterator[pa.ipc.Message]:
    """The dictionary and record batch messages an Arrow file's footer points at."""
    data = memoryview(buffer)
    end = len(data) - len(_FILE_MAGIC)
    if end < 12 or bytes(data[end:]) != _FILE_MAGIC:
        raise _CorruptError("no 'ARROW1' at the end of the file")
    (footer_size,) = _read(data, "<i", end - 4)
    start = end - 4 - footer_size
    if footer_size <= 0 or start < 8:
        raise _CorruptError(f"a footer of {footer_size} bytes in a {len(data)}-byte file")
    footer = _Table.root(data[start : end - 4])
    for index in (2, 3):  # dictionaries, then recordBatches
        for offset, meta_size, body_size in footer.structs(index, _BLOCK):
            if min(offset, meta_size, body_size) < 0 or offset + meta_size + body_size > start:
                raise _CorruptError(f"a block at {offset} of {meta_size + body_size} bytes")
            yield pa.ipc.read_message(buffer.slice(offset, meta_size + body_size))


@functools.cache
def _layout(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


def _read(data: memoryview, fmt: str, at: int) -> tuple[int, ...]:
    layout = _layout(fmt)
    if at < 0 or at + layout.size > len(data):
        raise _CorruptError(f"metadata points at byte {at} of {len(data)}")
    return layout.unpack_from(data, at)


class _Table:
    """A flatbuffer table: its fields by index, each read checked against the bytes."""

    __slots__ = ("_at", "_data", "_vtable", "_vtable_size")

    def __init__(self, data: memoryview, at: int) -> None:
        self._data = data
        self._at = at
        self._vtable = at - _read(data, "<i", at)[0]
        self._vtable_size = _read(data, "<H", self._vtable)[0]

    @classmethod
    def root(cls, data: memoryview) -> _Table:
        return cls(data, _read(data, "<I", 0)[0])

    def _field(self, index: int) -> int | None:
        entry = 4 + 2 * index
        if entry + 2 > self._vtable_size:
            return None
        (offset,) = _read(self._data, "<H", self._vtable + entry)
        return self._at + offset if offset else None

    def _target(self, index: int) -> int | None:
        """Where the table or vector that field ``index`` refers to starts."""
        at = self._field(index)
        return None if at is None else at + _read(self._data, "<I", at)[0]

    def scalar(self, index: int, fmt: str) -> int:
        at = self._field(index)
        return 0 if at is None else int(_read(self._data, fmt, at)[0])

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self._data, at)

    def structs(self, index: int, layout: struct.Struct) -> list[tuple[int, ...]]:
        """A vector of structs of ``layout``, e.g. an Arrow file's blocks."""
        at = self._target(index)
        if at is None:
            return []
        (count,) = _read(self._data, "<I", at)
        start, stop = at + 4, at + 4 + count * layout.size
        if stop > len(self._data):
            raise _CorruptError(f"a vector of {count} entries past the end of the metadata")
        return list(layout.iter_unpack(self._data[start:stop]))

    def pairs(self, index: int) -> list[tuple[int, ...]]:
        """A vector of two-int64 structs: a batch's field nodes or buffers."""
        return self.structs(index, _PAIR)
