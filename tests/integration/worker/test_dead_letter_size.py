"""`headrace run` with a request whose dead letter would not fit the producer's limit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.formats import Format
from tests.integration.support import Topics
from tests.integration.workers import (
    Fleet,
    Ids,
    Request,
    ccfraud_table,
    content_type,
    decode_rows,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration


def test_a_dead_letter_over_the_producer_limit_is_published_without_its_value(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """A request just under kafka.max_message_bytes that fails to decode and carries a 70 KB
    header is dead-lettered without its bytes (x-original-bytes) but with its headers; the
    worker stays up and serves the requests around it."""
    limit = 200_000
    topics = new_topics(partitions=1)
    worker = fleet.start(write_config(tmp_path, topics, kafka={"max_message_bytes": limit}))
    ids = Ids()
    value, blob = b"\x00" * (limit - 1000), b"h" * 70_000
    good = [
        Request(
            encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM),
            f"good-{n}".encode(),
            content_type(Format.ARROW_STREAM),
        )
        for n in range(2)
    ]
    bad = Request(value, b"bad", [("x-request-id", b"big-1"), ("x-blob", blob)])
    sent = fleet.requests(topics).send([good[0], bad, good[1]])
    outputs = fleet.outputs(topics)

    assert not outputs.wait_answered(sent, timeout=30)
    outputs.settle()
    (dead,) = outputs.dead_letters
    assert dead.source == sent[1].where
    assert (dead.key, dead.value) == (b"bad", b"")
    assert dead.header("x-original-bytes") == str(len(value))
    assert dead.header("x-error-type") == "decode_error"
    assert dead.header("x-request-id") == "big-1"
    assert dead.header("x-blob") == blob.decode()
    assert sorted(r.source for r in outputs.results) == [sent[0].where, sent[2].where]
    assert worker.process.poll() is None


def test_a_request_larger_than_the_prefetch_cap_is_read_and_served(
    fleet: Fleet, new_topics: Callable[..., Topics], tmp_path: Path
) -> None:
    """The worker's consumer prefetches at most 4 MiB (which also caps librdkafka's
    fetch.max.bytes): a 6 MB request under a 16 MB kafka.max_message_bytes is still fetched —
    served when it decodes, dead-lettered whole when it does not — and the partition goes on."""
    topics = new_topics(partitions=1)
    limit = 16 * 1024 * 1024
    worker = fleet.start(write_config(tmp_path, topics, kafka={"max_message_bytes": limit}))
    ids = Ids()
    big_rows = ids.take(52_000)  # 29 float32 a row: ~6 MB of Arrow
    garbage = b"\x00" * 6_000_000
    requests = [
        Request(encode(ccfraud_table(big_rows), Format.ARROW_STREAM), b"big", _ARROW),
        Request(garbage, b"garbage", _ARROW),
        Request(encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM), b"small", _ARROW),
    ]
    assert len(requests[0].value) > 4 * 1024 * 1024
    sent = fleet.requests(topics, max_message_bytes=limit).send(requests)
    outputs = fleet.outputs(topics)

    assert not outputs.wait_answered(sent, timeout=60)
    outputs.settle()
    results = {record.key: record for record in outputs.results}
    assert sorted(results) == [b"big", b"small"]
    assert decode_rows(results[b"big"]).num_rows == len(big_rows)
    (dead,) = outputs.dead_letters
    assert (dead.key, dead.value) == (b"garbage", garbage)
    assert dead.header("x-error-type") == "decode_error"
    assert worker.process.poll() is None


_ARROW = content_type(Format.ARROW_STREAM)
