"""A request whose header name is not UTF-8: confluent-kafka cannot read its headers, and no
Python client can produce one, so it is produced here through the librdkafka that
confluent-kafka bundles (``rd_kafka_produceva`` takes header names as raw C strings)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path

import confluent_kafka
import pytest

from tests.integration.support import Topics
from tests.integration.workers import Fleet, Request, write_config

from .test_worker_lifecycle import _single_rows

pytestmark = pytest.mark.integration


class _Header(ctypes.Structure):
    _fields_ = (("name", ctypes.c_char_p), ("value", ctypes.c_void_p), ("size", ctypes.c_ssize_t))


class _Memory(ctypes.Structure):
    _fields_ = (("pointer", ctypes.c_void_p), ("size", ctypes.c_size_t))


class _Value(ctypes.Union):
    _fields_ = (
        ("text", ctypes.c_char_p),
        ("i32", ctypes.c_int32),
        ("memory", _Memory),
        ("header", _Header),
        ("pad", ctypes.c_char * 64),
    )


class _Field(ctypes.Structure):  # rd_kafka_vu_t
    _fields_ = (("kind", ctypes.c_int), ("value", _Value))


_TOPIC, _PARTITION, _VALUE, _HEADER = 1, 3, 4, 9  # RD_KAFKA_VTYPE_*


def _librdkafka() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).parent.with_name("confluent_kafka.libs")
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        pytest.skip(f"no bundled librdkafka in {libs}")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, *[ctypes.c_char_p] * 3, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_raw(
    bootstrap: str, topic: str, partition: int, value: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> None:
    """Produce one record whose header names are any bytes but NUL, and wait for it."""
    lib, error = _librdkafka(), ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    assert lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), error, 512) == 0
    handle = lib.rd_kafka_new(0, conf, error, 512)  # RD_KAFKA_PRODUCER
    assert handle, error.value
    buffers = [ctypes.create_string_buffer(value, len(value))]
    fields = [
        _Field(_TOPIC, _Value(text=topic.encode())),
        _Field(_PARTITION, _Value(i32=partition)),
        _Field(_VALUE, _Value(memory=_Memory(ctypes.addressof(buffers[0]), len(value)))),
    ]
    for name, text in headers:
        buffers.append(ctypes.create_string_buffer(text, len(text)))
        address = ctypes.addressof(buffers[-1])
        fields.append(_Field(_HEADER, _Value(header=_Header(name, address, len(text)))))
    try:
        assert not lib.rd_kafka_produceva(handle, (_Field * len(fields))(*fields), len(fields))
        assert lib.rd_kafka_flush(handle, 10_000) == 0, "not acknowledged within 10 s"
    finally:
        lib.rd_kafka_destroy(handle)


def test_a_header_name_that_is_not_utf8_is_dead_lettered_and_neighbours_served(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """The worker neither crashes nor stalls on a request whose header name is not UTF-8: it
    dead-letters it as a decode_error naming the header, and serves the requests around it."""
    topics = new_topics()
    config = write_config(tmp_path, topics)
    worker = fleet.start(config)
    requests = fleet.requests(topics)
    outputs = fleet.outputs(topics)
    before = requests.send(_single_rows(3))
    payload = _single_rows(1)[0].value
    produce_raw(topics.bootstrap, topics.input, 0, payload, [(b"trace\xff\xfe", b"t-1")])
    after = requests.send([Request(r.value, r.key, partition=0) for r in _single_rows(3)])

    outputs.wait_for(results=6, dead_letters=1, timeout=30)
    outputs.settle()

    assert worker.process.poll() is None, "the worker exited"
    assert {r.source for r in outputs.results} == {s.where for s in before + after}
    [letter] = outputs.dead_letters
    assert letter.source == (0, 3)
    assert letter.header("x-error-type") == "decode_error"
    assert "header name 'trace<ff><fe>' is not valid UTF-8" in letter.header("x-error-message")
    assert letter.value == payload
