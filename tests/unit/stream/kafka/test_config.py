"""librdkafka settings of the worker's consumer and producer, built from ``kafka``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipelines.config import KafkaSettings, load_settings
from stream.kafka.config import consumer_config, producer_config, worker_consumer_config
from tests.unit.stream.support import CCFRAUD

Config = dict[str, str | int | float | bool]
_BOOTSTRAP = "broker-1:9092,broker-2:9092"
_SECURITY: Config = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "worker",
    "sasl.password": "s3cret",
    "ssl.ca.location": "/etc/ssl/ca.pem",
}
_CONSUMER_ONLY: Config = {
    "group.instance.id": "worker-1",
    "auto.offset.reset": "latest",
    "enable.auto.commit": True,
    "auto.commit.interval.ms": 1000,
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2000,
    "max.poll.interval.ms": 600_000,
    "partition.assignment.strategy": "cooperative-sticky",
    "fetch.min.bytes": 1024,
    "max.partition.fetch.bytes": 2_097_152,
    "queued.min.messages": 10_000,
    "isolation.level": "read_committed",
    "enable.partition.eof": True,
    "check.crcs": True,
}


def _settings(properties: Config | None = None) -> KafkaSettings:
    return KafkaSettings.model_validate({"group_id": "fraud", "properties": properties or {}})


def test_consumer_defaults_commit_by_hand_and_read_from_the_start() -> None:
    """The consumer joins the group, never auto-commits, and starts at the earliest offset."""
    config = consumer_config(_settings(), _BOOTSTRAP)
    assert config["bootstrap.servers"] == _BOOTSTRAP
    assert config["group.id"] == "fraud"
    assert config["client.id"] == "headrace-fraud"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"


def test_producer_defaults_are_idempotent_and_wait_for_all_replicas() -> None:
    """The producer is idempotent with ``acks=all`` and has no group."""
    config = producer_config(_settings(), _BOOTSTRAP)
    assert config["bootstrap.servers"] == _BOOTSTRAP
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert "group.id" not in config


@pytest.mark.parametrize("build", [consumer_config, producer_config])
def test_properties_pass_through_verbatim(build: Callable[..., Config]) -> None:
    """Security settings in ``kafka.properties`` reach librdkafka unchanged."""
    config = build(_settings(_SECURITY), _BOOTSTRAP)
    assert {key: config[key] for key in _SECURITY} == _SECURITY


def test_properties_win_over_defaults() -> None:
    """A property replaces the default of the same key."""
    consumer = consumer_config(_settings({"fetch.wait.max.ms": 50}), _BOOTSTRAP)
    producer = producer_config(_settings({"linger.ms": 20, "acks": 1}), _BOOTSTRAP)
    assert consumer["fetch.wait.max.ms"] == 50
    assert (producer["linger.ms"], producer["acks"]) == (20, 1)


def test_overrides_win_over_properties() -> None:
    """What the worker must set (exactly-once, message size) beats ``kafka.properties``."""
    settings = _settings({"isolation.level": "read_uncommitted", "message.max.bytes": 1000})
    consumer = consumer_config(settings, _BOOTSTRAP, **{"isolation.level": "read_committed"})
    producer = producer_config(settings, _BOOTSTRAP, **{"message.max.bytes": 2_000_000})
    assert consumer["isolation.level"] == "read_committed"
    assert producer["message.max.bytes"] == 2_000_000


@pytest.mark.parametrize("key", sorted(_CONSUMER_ONLY))
def test_consumer_only_properties_are_not_given_to_the_producer(key: str) -> None:
    """librdkafka warns about consumer properties on a producer, so the producer never gets them."""
    settings = _settings(_CONSUMER_ONLY | _SECURITY)
    assert consumer_config(settings, _BOOTSTRAP)[key] == _CONSUMER_ONLY[key]
    producer = producer_config(settings, _BOOTSTRAP)
    assert key not in producer
    assert producer["security.protocol"] == "SASL_SSL"


def test_max_poll_interval_covers_the_longest_batch() -> None:
    """A pipeline whose worst batch outlasts librdkafka's 5 minutes gets a longer
    max.poll.interval.ms; a short one keeps the default, and kafka.properties wins."""
    settings = load_settings(CCFRAUD)
    assert "max.poll.interval.ms" not in worker_consumer_config(settings, "b:9092", max_serve_s=60)
    long = worker_consumer_config(settings, "b:9092", max_serve_s=500)
    assert long["max.poll.interval.ms"] == 530_000
    kafka = settings.kafka.model_copy(update={"properties": {"max.poll.interval.ms": 400_000}})
    chosen = settings.model_copy(update={"kafka": kafka})
    assert (
        worker_consumer_config(chosen, "b:9092", max_serve_s=500)["max.poll.interval.ms"] == 400_000
    )
