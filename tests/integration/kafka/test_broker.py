"""The embedded broker's lifecycle, bootstrap resolution, topic admin and a Kafka round trip."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, Producer
from confluent_kafka.admin import AdminClient

from stream.errors import BrokerStartError, KafkaUnavailable, TopicError
from stream.kafka.admin import ensure_topics, topic_partitions
from stream.kafka.broker import (
    EMBEDDED,
    EMBEDDED_ADDRESS,
    EMBEDDED_HOST,
    EMBEDDED_PORT,
    EmbeddedBroker,
    _starting_lock,
    free_port,
    resolve_bootstrap,
)
from tests.integration.support import Topics, consume

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((EMBEDDED_HOST, port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Resolves "embedded" in a child process, prints the address and whether it owns the broker,
# and holds it (if it does) until its stdin closes.
_RESOLVE_EMBEDDED = textwrap.dedent(
    """
    import sys
    from stream.kafka.broker import resolve_bootstrap
    address, broker = resolve_bootstrap("embedded")
    print(address, broker is not None, flush=True)
    sys.stdin.read()
    if broker is not None:
        broker.stop()
    """
)


def _resolve_in_child() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RESOLVE_EMBEDDED],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _topic_names(bootstrap: str) -> set[str]:
    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def test_embedded_broker_starts_and_stops_by_pid() -> None:
    """start() gives a broker that answers Kafka; stop() leaves no process and a free port."""
    broker = EmbeddedBroker(free_port())
    with broker:
        pid = broker.pid
        assert pid is not None and _alive(pid)
        assert ensure_topics(broker.address, {"lifecycle": 2}) == ["lifecycle"]
    assert broker.pid is None
    assert not _alive(pid)
    assert _port_free(int(broker.address.rsplit(":", 1)[1]))


def test_start_on_a_taken_port_fails_naming_the_port() -> None:
    """A port already in use is refused at once with an error that names it."""
    with socket.socket() as sock:
        sock.bind((EMBEDDED_HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerStartError, match=f"127.0.0.1:{port}"):
            EmbeddedBroker(port).start()
        assert time.monotonic() - started < 5


def test_resolve_bootstrap_passes_other_addresses_through() -> None:
    """Anything but 'embedded' is returned as given, with no broker started."""
    assert resolve_bootstrap("kafka-1:9092,kafka-2:9092") == ("kafka-1:9092,kafka-2:9092", None)


@pytest.mark.skipif(not _port_free(EMBEDDED_PORT), reason=f"{EMBEDDED_ADDRESS} is in use here")
def test_resolve_bootstrap_starts_the_embedded_broker_then_reuses_it() -> None:
    """'embedded' starts a broker on 19092 when none runs, and reuses the running one after."""
    address, broker = resolve_bootstrap(EMBEDDED)
    assert broker is not None
    try:
        assert address == EMBEDDED_ADDRESS == broker.address
        assert resolve_bootstrap(" Embedded ") == (EMBEDDED_ADDRESS, None)
    finally:
        broker.stop()
    assert _port_free(EMBEDDED_PORT)


@pytest.mark.skipif(not _port_free(EMBEDDED_PORT), reason=f"{EMBEDDED_ADDRESS} is in use here")
def test_resolve_bootstrap_is_race_safe_across_processes() -> None:
    """Two processes resolving 'embedded' at once share one broker: exactly one owns it."""
    children = [_resolve_in_child() for _ in range(2)]
    try:
        lines = sorted(child.stdout.readline().split() for child in children)  # type: ignore[union-attr]
        assert lines == [[EMBEDDED_ADDRESS, "False"], [EMBEDDED_ADDRESS, "True"]]
    finally:
        for child in children:
            child.communicate(timeout=15)
    assert _port_free(EMBEDDED_PORT)


@pytest.mark.skipif(not _port_free(EMBEDDED_PORT), reason=f"{EMBEDDED_ADDRESS} is in use here")
def test_resolve_bootstrap_waits_for_a_broker_another_process_is_starting() -> None:
    """However long another process takes to start the embedded broker, one resolving
    'embedded' meanwhile waits for that broker and uses it: it never starts a second one."""
    broker = EmbeddedBroker(EMBEDDED_PORT)
    with _starting_lock(EMBEDDED_PORT):  # what a process starting the broker holds
        child = _resolve_in_child()
        assert child.stdout is not None
        try:
            waiting, _, _ = select.select([child.stdout], [], [], 3.0)
            assert not waiting, (
                f"resolved while another start was under way: {child.stdout.readline()}"
            )
            broker.start()
        except BaseException:
            child.kill()
            broker.stop()
            raise
    try:
        assert child.stdout.readline().split() == [EMBEDDED_ADDRESS, "False"]
    finally:
        child.communicate(timeout=15)
        broker.stop()
    assert _port_free(EMBEDDED_PORT)


def test_round_trip_keeps_keys_headers_and_timestamps(topic_names: Topics) -> None:
    """Keys, binary and repeated headers, empty values and CreateTime timestamps come through."""
    sent: list[tuple[bytes | None, bytes, list[tuple[str, str | bytes | None]] | None]] = [
        (b"k1", b"v1", [("x-request-id", b"r1"), ("dup", b"a"), ("dup", b"b")]),
        (None, b"v2", [("bin", bytes(range(256))), ("empty", b"")]),
        (b"k3", b"", None),
    ]
    producer = Producer({"bootstrap.servers": topic_names.bootstrap, "linger.ms": 5})
    for key, value, headers in sent:
        producer.produce(
            topic_names.input, value, key=key, headers=headers, timestamp=1_700_000_000_123
        )
    assert producer.flush(10) == 0

    consumer = Consumer(topic_names.consumer_config())
    consumer.subscribe([topic_names.input])
    try:
        received = consume(consumer, len(sent))
    finally:
        consumer.close()

    assert [(m.key(), m.value(), m.headers()) for m in received] == sent
    assert [m.timestamp() for m in received] == [(TIMESTAMP_CREATE_TIME, 1_700_000_000_123)] * 3
    assert [m.offset() for m in received] == [0, 1, 2]


def test_ensure_topics_creates_with_partitions_and_is_idempotent(bootstrap: str) -> None:
    """Missing topics are created with their partition counts; existing ones are left alone."""
    suffix = uuid.uuid4().hex[:8]
    four, one = f"t4-{suffix}", f"t1-{suffix}"
    assert ensure_topics(bootstrap, {four: 4, one: 1}) == sorted([four, one])
    assert ensure_topics(bootstrap, {four: 4, one: 3}) == []
    assert topic_partitions(bootstrap, four) == 4
    assert topic_partitions(bootstrap, one) == 1


def test_topic_partitions_of_a_missing_topic_raises_without_creating_it(bootstrap: str) -> None:
    """Asking about an unknown topic names it and does not auto-create it."""
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(TopicError, match=missing):
        topic_partitions(bootstrap, missing)
    assert missing not in _topic_names(bootstrap)


def test_kafka_unavailable_names_the_address_within_the_timeout() -> None:
    """Where nothing listens, ensure_topics gives up after its timeout naming the address."""
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=f"cannot reach Kafka at {address} within 2 s"):
        ensure_topics(address, {"never": 1}, timeout=2)
    assert time.monotonic() - started < 3.5


def test_new_topics_fixture_gives_unique_created_topics(
    new_topics: Callable[..., Topics], bootstrap: str
) -> None:
    """Each call yields fresh topics and group id, created with the partitions asked."""
    first, second = new_topics(partitions=3), new_topics()
    assert first.group_id != second.group_id
    assert not set(first.names) & set(second.names)
    assert {topic_partitions(bootstrap, name) for name in first.names} == {3}
