"""The seeded generator's raw material: payloads in every format, byte-level mutations, odd
JSON values and integers that make interesting lengths and offsets."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pyarrow as pa

from pipelines import formats
from pipelines.formats import CONTENT_TYPES, Format

TABLE_FORMATS = (Format.ARROW_STREAM, Format.ARROW_FILE, Format.PANDAS_RECORDS, Format.OIP)
INTERESTING = (0, 1, -1, 7, 255, 2**15, 2**31 - 1, 2**31, 2**32, 3_000_000_000, 2**62, 2**63 - 1)
ODD_TEXT = (b"\xff\xfe\xfd", b"caf\xc3", b"\xed\xa0\x80", b"", b"\x00", "名前".encode(), b"a" * 300)

# ------------------------------------------------------------------ payloads


def arrow(
    table: pa.Table, fmt: Format, compression: str | None = None, chunk: int | None = None
) -> bytes:
    """``table`` as an Arrow IPC stream or file."""
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if fmt is Format.ARROW_FILE else pa.ipc.new_stream
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with opener(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=chunk)
    return bytes(sink.getvalue().to_pybytes())


def encoded(table: pa.Table, fmt: Format, rng: random.Random) -> bytes:
    """``table`` as a client sends it in ``fmt``; Arrow sometimes compressed or in chunks."""
    if fmt in (Format.ARROW_STREAM, Format.ARROW_FILE):
        compression = rng.choice([None, None, "lz4", "zstd"])
        return arrow(table, fmt, compression, rng.choice([None, 1, 2]))
    return formats.encode_request(table, fmt)


def as_json(value: object) -> bytes:
    """JSON as a careless producer writes it: integers of any size, NaN and Infinity allowed."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def content_type(fmt: Format) -> tuple[str, bytes]:
    return ("content-type", CONTENT_TYPES[fmt].encode())


# ------------------------------------------------------------------ the generator


class Fuzzer:
    """Seeded: the same seed makes the same requests."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # -- byte-level mutations, any payload

    def flip(self, payload: bytes) -> bytes:
        data = bytearray(payload or b"\x00")
        for _ in range(self.rng.randint(1, 8)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data)

    def cut(self, payload: bytes) -> bytes:
        return payload[: self.rng.randrange(max(1, len(payload)))]

    def stomp(self, payload: bytes) -> bytes:
        """Write an interesting integer (a length, an offset) over bytes at a random place."""
        data = bytearray(payload)
        value = self.rng.choice(INTERESTING) * self.rng.choice((1, 1, -1))
        width = self.rng.choice((4, 8))
        raw = (value % 2 ** (8 * width)).to_bytes(width, "little")
        at = self.rng.randrange(max(1, len(data) - width))
        data[at : at + width] = raw
        return bytes(data)

    def splice(self, payload: bytes) -> bytes:
        at, size = self.rng.randrange(len(payload) + 1), self.rng.randint(1, 64)
        if self.rng.random() < 0.5:
            return payload[:at] + payload[at : at + size] * self.rng.randint(2, 5) + payload[at:]
        return payload[:at] + self.rng.randbytes(size) + payload[at:]

    def mangle(self, payload: bytes) -> bytes:
        return self.rng.choice((self.flip, self.cut, self.stomp, self.splice))(payload)

    # -- odd values

    def json_value(self, depth: int = 0) -> object:
        choices: list[Callable[[], object]] = [
            lambda: None,
            lambda: self.rng.random() < 0.5,
            lambda: self.rng.choice(INTERESTING) * self.rng.choice((1, -1)),
            lambda: 10 ** self.rng.randint(18, 40),
            lambda: self.rng.uniform(-1e308, 1e308),
            lambda: self.rng.choice(("", "x", "名前", "1.5", "NaN", "\u0000")),
        ]
        if depth < 4:
            choices += [
                lambda: [self.json_value(depth + 1) for _ in range(self.rng.randint(0, 4))],
                lambda: {str(i): self.json_value(depth + 1) for i in range(self.rng.randint(0, 3))},
            ]
        return self.rng.choice(choices)()

    def nested(self, depth: int) -> bytes:
        """A JSON list nested ``depth`` levels deep."""
        return b"[" * depth + b"1.5" + b"]" * depth

    def odd_json_text(self) -> bytes:
        return self.rng.choice(
            (
                b"NaN",
                b"Infinity",
                b"-Infinity",
                b"1e400",
                b"-1e400",
                b"123456789012345678901234567890",
            )
        )
