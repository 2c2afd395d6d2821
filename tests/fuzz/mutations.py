"""Requests as a careless or hostile producer makes them: each mutation returns a payload, its
headers, and whether the request must still be served."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import orjson
import pyarrow as pa

from pipelines import formats
from pipelines.formats import Format
from stream.types import Headers
from tests.fuzz.fuzzer import (
    INTERESTING,
    TABLE_FORMATS,
    Fuzzer,
    arrow,
    as_json,
    content_type,
    encoded,
)
from tests.fuzz.targets import LIMITS, Target, ccfraud

Mutation = Callable[[Fuzzer, Target], tuple[bytes, Headers, bool]]
"""Makes a request for a pipeline: its payload, headers, and whether it must be served."""


def good_table(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    fmt = fz.rng.choice(TABLE_FORMATS)
    payload = encoded(target.make_good(fz.rng), fmt, fz.rng)
    sniffed = fz.rng.random() < 0.3
    return payload, () if sniffed else (content_type(fmt),), True


def good_custom(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    headers: Headers = fz.rng.choice(
        ((), (content_type(Format.CUSTOM),), (("content-type", b"application/json"),))
    )
    return as_json(target.make_good(fz.rng)), headers, True


def mangled_bytes(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    payload, headers, _ = (good_custom if target.custom else good_table)(fz, target)
    return fz.mangle(payload), headers, False


def random_bytes(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    prefix = fz.rng.choice(
        (b"", b"ARROW1", b"ARROW1\x00\x00", b"\xff\xff\xff\xff", b"{", b"[", b'{"inputs": ')
    )
    return prefix + fz.rng.randbytes(fz.rng.randint(0, 200)), (), False


def odd_schema(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    """A valid Arrow payload whose columns are wrong: names, types, nesting, rows."""
    table = target.make_good(fz.rng) if not target.custom else ccfraud(fz.rng)
    assert isinstance(table, pa.Table)
    rows = table.num_rows
    first = table.column_names[0]
    odd: dict[str, Callable[[], pa.Table]] = {
        "duplicate": lambda: pa.Table.from_arrays(
            [*table.columns, table.column(0)], names=[*table.column_names, table.column_names[-1]]
        ),
        "strings": lambda: table.set_column(
            0, first, pa.array([str(v) for v in table.column(0).to_pylist()])
        ),
        "ints": lambda: table.set_column(0, first, pa.array(range(rows))),
        "nulls": lambda: table.set_column(0, first, pa.nulls(rows)),
        "null-lists": lambda: table.set_column(
            0, first, pa.nulls(rows, table.schema.field(0).type)
        ),
        "struct": lambda: table.set_column(0, first, pa.array([{"a": 1, "b": [1.5]}] * rows)),
        "map": lambda: table.set_column(
            0, first, pa.array([[("k", 1)]] * rows, pa.map_(pa.string(), pa.int64()))
        ),
        "dictionary": lambda: table.set_column(
            0, first, pa.array(["a"] * rows).dictionary_encode()
        ),
        "deeper": lambda: table.set_column(
            0, first, pa.array([[v] for v in table.column(0).to_pylist()])
        ),
        "ragged": lambda: table.set_column(
            0, first, pa.array([[1.5] * fz.rng.randint(0, 40) for _ in range(rows)])
        ),
        "large-list": lambda: table.set_column(
            0, first, table.column(0).cast(_large(table.schema.field(0).type))
        ),
        "zero-rows": lambda: table.slice(0, 0),
        "no-columns": lambda: pa.table({}),
        "odd-extra": lambda: table.append_column(
            fz.rng.choice(("", "in.x", "time", "名前", "x" * 300, "a.b.c")),
            fz.rng.choice(_ODD_COLUMNS)(rows),
        ),
        "renamed": lambda: table.rename_columns(["x", *table.column_names[1:]]),
        "not-finite": lambda: table.set_column(
            0, first, _not_finite(table.column(0), fz.rng.choice((np.nan, np.inf, -np.inf)))
        ),
    }
    kind = fz.rng.choice(sorted(odd))
    try:
        mutated = odd[kind]()
    except (pa.ArrowException, ValueError, TypeError):
        mutated = table.slice(0, 0)
    fmt = fz.rng.choice((Format.ARROW_STREAM, Format.ARROW_FILE))
    return encoded(mutated, fmt, fz.rng), fz.rng.choice(((), (content_type(fmt),))), False


def _not_finite(column: pa.ChunkedArray, value: float) -> pa.Array:
    """``column`` with every leaf value ``value`` (NaN or an infinity)."""
    leaves, levels = column.combine_chunks(), []
    while pa.types.is_list(leaves.type):
        levels.append(leaves.offsets)
        leaves = leaves.flatten()
    array = pa.array(np.full(len(leaves), value, np.float32))
    for offsets in reversed(levels):
        array = pa.ListArray.from_arrays(offsets, array)
    return array


def _large(arrow_type: pa.DataType) -> pa.DataType:
    return (
        pa.large_list(_large(arrow_type.value_type)) if pa.types.is_list(arrow_type) else arrow_type
    )


_ODD_COLUMNS: tuple[Callable[[int], pa.Array], ...] = (
    lambda n: pa.array([b"\xff\x00"] * n, pa.binary()),
    lambda n: pa.array(["x"] * n, pa.large_string()),
    lambda n: pa.array([1] * n, pa.decimal128(38, 2)),
    lambda n: pa.array([1] * n, pa.duration("ns")),
    lambda n: pa.array([1] * n, pa.date32()),
    lambda n: pa.array([1] * n, pa.timestamp("ns", "Asia/Tokyo")),
    lambda n: pa.array(np.ones(n, np.float16)),
    lambda n: pa.array([{}] * n, pa.struct([])),
    lambda n: pa.array([[1, 2]] * n, pa.list_(pa.int8(), 2)),
    pa.nulls,
    lambda n: pa.array([True] * n),
    lambda n: pa.array([[None]] * n, pa.list_(pa.null())),
    lambda n: pa.array([2**64 - 1] * n, pa.uint64()),
)


def bomb(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    """A compressed Arrow payload of zeros that decodes past a bound (rows or bytes)."""
    over_rows = fz.rng.random() < 0.5
    rows = LIMITS.max_request_rows + 1 if over_rows else 40_000
    width = 1 if over_rows else 29
    table = pa.table(
        {
            "tensor": pa.FixedSizeListArray.from_arrays(
                pa.array(np.zeros(rows * width, np.float32)), width
            ).cast(pa.list_(pa.float32()))
        }
    )
    fmt = fz.rng.choice((Format.ARROW_STREAM, Format.ARROW_FILE))
    return arrow(table, fmt, fz.rng.choice(("lz4", "zstd"))), (content_type(fmt),), False


def bad_records(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    """pandas-records JSON of the wrong types, nesting, sizes or text."""
    column = "count" if target.custom else ("image" if target.name == "digits" else "tensor")
    rows: list[object] = [{column: fz.json_value()} for _ in range(fz.rng.randint(1, 3))]
    choice = fz.rng.randrange(8)
    if choice == 0:
        payload = b'[{"' + column.encode() + b'": [' + fz.odd_json_text() + b"]}]"
    elif choice == 1:
        payload = (
            b'[{"' + column.encode() + b'": ' + fz.nested(fz.rng.choice((3, 60, 1100))) + b"}]"
        )
    elif choice == 2:
        payload = as_json([{column: [0.5]}] * (LIMITS.max_request_rows + 1))
    elif choice == 3:
        payload = as_json(fz.json_value())
    elif choice == 4:
        payload = as_json(
            [{**row, fz.rng.choice(("", "id", "名前")): fz.json_value()} for row in rows]
        )  # type: ignore[dict-item]
    elif choice == 5:
        payload = as_json([{}, *rows])
    else:
        payload = as_json(rows)
    headers = fz.rng.choice(
        ((), (content_type(Format.PANDAS_RECORDS),), (("content-type", b"application/json"),))
    )
    return payload, headers, False


_SHAPES: tuple[object, ...] = (
    [],
    [-1],
    [1.5],
    ["1"],
    [True],
    [0],
    [3_000_000_000, 0],
    [1, 0, 4_294_967_296],
    [1, 2**31, 0],
    [2**63],
    [2**70, 0],
    [1] * 40,
    [1] * 70,
    None,
    7,
    [1, 29],
    [2, 29],
    [1, 8, 8],
    [1, 64],
    [0, 29],
    [1, 0],
)
_DATATYPES: tuple[object, ...] = (
    "FP32",
    "FP64",
    "FP16",
    "INT64",
    "INT8",
    "UINT64",
    "BOOL",
    "BYTES",
    "fp32",
    "FLOAT",
    None,
    3,
)


def bad_oip(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    """OIP requests with bad shapes, datatypes, data, ids, parameters or inputs."""
    table = target.make_good(fz.rng) if not target.custom else ccfraud(fz.rng)
    assert isinstance(table, pa.Table)
    doc = orjson.loads(formats.encode_request(table, Format.OIP))
    tensor = doc["inputs"][0]
    choice = fz.rng.randrange(9)
    if choice <= 2:
        tensor["shape"] = fz.rng.choice(_SHAPES)
        if fz.rng.random() < 0.5:
            tensor["data"] = []
    elif choice == 3:
        tensor["datatype"] = fz.rng.choice(_DATATYPES)
    elif choice == 4:
        tensor["data"] = (
            fz.json_value()
            if fz.rng.random() < 0.5
            else tensor["data"][: fz.rng.randrange(len(tensor["data"]) + 1)]
        )
    elif choice == 5:
        tensor["parameters"] = fz.rng.choice(
            (
                {"timestamp_unit": "ms"},
                {"timestamp_unit": "parsec"},
                {"timestamp_unit": "s", "timezone": 3},
                fz.json_value(),
            )
        )
        tensor["datatype"] = "INT64"
        tensor["data"] = [fz.rng.choice(INTERESTING) for _ in tensor["data"]]
    elif choice == 6:
        doc[fz.rng.choice(("id", "parameters"))] = fz.json_value()
    elif choice == 7:
        doc["inputs"] = fz.rng.choice(
            (
                [],
                [tensor, tensor],
                [
                    tensor,
                    {
                        **tensor,
                        "name": "other",
                        "shape": [tensor["shape"][0] + 1, *tensor["shape"][1:]],
                    },
                ],
                fz.json_value(),
            )
        )
    else:
        del tensor[fz.rng.choice(("name", "shape", "datatype", "data"))]
    return as_json(doc), fz.rng.choice(((), (content_type(Format.OIP),))), False


def odd_extras(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    """A request whose model input is right, with extra columns of odd JSON values.

    They are echoed as ``in.*``, so what gets through decoding reaches the encoder.
    """
    if target.custom:
        return bad_custom(fz, target)
    table = target.make_good(fz.rng)
    assert isinstance(table, pa.Table)
    name = fz.rng.choice(("extra", "", "名前", "in.x", "time", "a/b"))
    if fz.rng.random() < 0.5:
        rows = table.to_pylist()
        deep = fz.rng.choice((0, 0, 0, 63, 64, 65, 300))
        for row in rows:
            row[name] = _deep(deep) if deep else fz.json_value()
        return as_json(rows), (), False
    doc = orjson.loads(formats.encode_request(table, Format.OIP))
    width = fz.rng.randint(0, 3)
    datatype = fz.rng.choice(("FP32", "FP64", "FP16", "INT64", "INT8", "UINT64", "BOOL", "BYTES"))
    shape = fz.rng.choice(
        ([table.num_rows, width], [table.num_rows * width], [table.num_rows, *[1] * 70])
    )
    count = math.prod(shape)
    data = [
        fz.json_value() if fz.rng.random() < 0.2 else _scalar(fz, datatype) for _ in range(count)
    ]
    doc["inputs"].append({"name": name, "shape": shape, "datatype": datatype, "data": data})
    return as_json(doc), (content_type(Format.OIP),), False


def _deep(depth: int) -> object:
    """A number in ``depth`` nested lists."""
    value: object = 1.5
    for _ in range(depth):
        value = [value]
    return value


def _scalar(fz: Fuzzer, datatype: str) -> object:
    if datatype == "BOOL":
        return fz.rng.random() < 0.5
    if datatype == "BYTES":
        return fz.rng.choice(("", "x", "名前", "\u0000"))
    if datatype.startswith("FP"):
        return fz.rng.choice((0.5, -1e308, 1e308, 65504.0, 1e-320))
    return fz.rng.choice(INTERESTING) * fz.rng.choice((1, -1))


def bad_custom(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    value = fz.rng.choice(
        ({"count": fz.json_value()}, fz.json_value(), {"count": [1] * fz.rng.randint(0, 6)})
    )
    payload = (
        as_json(value) if fz.rng.random() < 0.9 else b'{"count": [' + fz.odd_json_text() + b"]}"
    )
    headers = fz.rng.choice(
        (
            (),
            (content_type(Format.CUSTOM),),
            (content_type(Format.OIP),),
            (content_type(Format.ARROW_STREAM),),
        )
    )
    return payload, headers, False


def good(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    return (good_custom if target.custom else good_table)(fz, target)


def odd_content(fz: Fuzzer, target: Target) -> tuple[bytes, Headers, bool]:
    return (bad_custom if target.custom else odd_schema)(fz, target)


MUTATIONS: tuple[tuple[float, Mutation], ...] = (
    (0.40, good),
    (0.20, mangled_bytes),
    (0.04, random_bytes),
    (0.10, odd_content),
    (0.02, bomb),
    (0.10, bad_records),
    (0.10, bad_oip),
    (0.06, odd_extras),
)
