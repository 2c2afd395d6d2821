"""What ``/healthz`` and ``/readyz`` say, and the thread that keeps the broker's part fresh."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipelines.config import KafkaSettings
from stream.kafka import clients
from stream.kafka.clients import BrokerProbe
from stream.kafka.config import probe_config
from stream.kafka.fakes import FakeClock
from stream.ops.health import BrokerWatch, Health

_ADDRESS = "broker-1:9092"


class _Probe:
    """A broker that answers, fails with ``error``, or hangs while ``hang`` is clear."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.raises: Exception | None = None
        self.calls = 0

    def __call__(self, timeout: float) -> str | None:
        del timeout
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return self.error


def _ready_health(clock: FakeClock) -> Health:
    health = Health(clock=clock, broker_silence_s=6.0)
    health.partitions = 2
    return health


def test_readyz_names_the_broker_while_it_does_not_answer_and_recovers() -> None:
    """A failed probe makes /readyz not ready with the broker's address and the reason; the
    next answer makes it ready again. /healthz is about the loop only."""
    clock, probe = FakeClock(), _Probe()
    health = _ready_health(clock)
    watch = BrokerWatch(probe, health, address=_ADDRESS)
    assert watch.check()
    assert health.ready() == (True, "ok: 2 partitions assigned")

    probe.error = "Failed to get metadata: Local: Timed out"
    assert not watch.check()
    ok, reason = health.ready()
    assert not ok
    assert reason == f"broker unreachable: {_ADDRESS}: Failed to get metadata: Local: Timed out"
    assert health.alive() == (True, "ok")

    probe.error = None
    assert watch.check()
    assert health.ready() == (True, "ok: 2 partitions assigned")


def test_a_probe_that_raises_counts_as_a_failure() -> None:
    """A client that cannot be asked (closed) is reported, not a crash of the watch."""
    clock, probe = FakeClock(), _Probe()
    health = _ready_health(clock)
    probe.raises = RuntimeError("Consumer closed")
    assert not BrokerWatch(probe, health, address=_ADDRESS).check()
    assert health.ready() == (
        False,
        f"broker unreachable: {_ADDRESS}: RuntimeError: Consumer closed",
    )


def test_a_broker_silent_too_long_is_unreachable_even_without_a_failed_probe() -> None:
    """Once watched, no answer for longer than ``broker_silence_s`` is not ready (a probe stuck
    for ever still shows); an unwatched broker never is."""
    clock = FakeClock()
    health = _ready_health(clock)
    clock.advance(60)
    assert health.ready()[0]  # nobody watches the broker: nothing to say about it
    health.watch_broker(_ADDRESS)
    clock.advance(5)
    assert health.ready()[0]
    clock.advance(2)
    assert health.ready() == (False, f"broker unreachable: {_ADDRESS}: no answer for 7 s")
    health.broker_answered()
    assert health.ready()[0]


def test_the_watch_thread_probes_until_stopped() -> None:
    """Started, the watch probes every interval on its own thread and reports without the
    worker loop; ``stop`` ends it promptly."""
    probe = _Probe()
    health = Health()
    health.partitions = 1
    with BrokerWatch(probe, health, address=_ADDRESS, interval_s=0.01, timeout_s=0.1) as watch:
        deadline = time.monotonic() + 5
        probe.error = "Local: Broker transport failure"
        while health.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "Broker transport failure" in health.ready()[1]
        probe.error = None
        while not health.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert health.ready()[0]
        started = time.monotonic()
        watch.stop()
        assert time.monotonic() - started < 1.0
    calls = probe.calls
    time.sleep(0.05)
    assert probe.calls == calls
    assert not any(t.name == "headrace-broker-watch" for t in threading.enumerate())


def test_the_probe_asks_for_the_input_topic_on_a_client_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probe lists one topic's metadata with the timeout it is given; librdkafka's
    failure becomes its reason."""
    asked: list[tuple[str, float]] = []

    class _Admin:
        def __init__(self, config: dict[str, object]) -> None:
            self.config = config

        def list_topics(self, topic: str, timeout: float) -> None:
            asked.append((topic, timeout))
            if len(asked) > 1:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get metadata"))

    monkeypatch.setattr(clients, "AdminClient", _Admin)
    probe = BrokerProbe(probe_config(KafkaSettings(group_id="fraud"), _ADDRESS), "requests")
    assert probe(2.5) is None
    assert probe(2.5) == "Failed to get metadata"
    assert asked == [("requests", 2.5), ("requests", 2.5)]


def test_the_probe_connects_like_the_worker_and_never_creates_a_topic() -> None:
    """Its config keeps the connection and security properties, drops the consumer's and
    the producer's own, and turns topic auto-creation off."""
    kafka = KafkaSettings(
        group_id="fraud",
        properties={
            "security.protocol": "SASL_SSL",
            "sasl.password": "s3cret",
            "partition.assignment.strategy": "cooperative-sticky",
            "linger.ms": 20,
        },
    )
    config = probe_config(kafka, _ADDRESS)
    assert config["bootstrap.servers"] == _ADDRESS
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "s3cret"
    assert "partition.assignment.strategy" not in config
    assert "linger.ms" not in config
    assert config["allow.auto.create.topics"] is False
