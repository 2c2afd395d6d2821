"""Group membership settings: ``kafka.instance_id`` (static membership) and the rebalance
protocol that ``partition.assignment.strategy`` implies."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import KafkaSettings, Settings, load_settings
from pipelines.errors import ConfigError
from stream.kafka.config import (
    group_instance_id,
    rebalance_protocol,
    worker_consumer_config,
    worker_producer_config,
)
from stream.worker.runtime import REPLICA_INDEX, transactional_id
from tests.unit.stream.support import CCFRAUD

_BOOTSTRAP = "broker:9092"


def _config(tmp_path: Path, **kafka: object) -> Path:
    """The ccfraud example config with ``kafka`` keys added (models stay where they are)."""
    raw = yaml.safe_load(CCFRAUD.read_text())
    for step in raw["pipeline"]["steps"]:
        if "model" in step:
            step["model"]["path"] = str((CCFRAUD.parent / step["model"]["path"]).resolve())
    raw["kafka"] = {**raw.get("kafka", {}), **kafka}
    path = tmp_path / "ccfraud.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _settings(tmp_path: Path, **kafka: object) -> Settings:
    return load_settings(_config(tmp_path, **kafka))


def test_instance_id_defaults_to_none_and_membership_stays_dynamic(tmp_path: Path) -> None:
    """Without ``kafka.instance_id`` the consumer config has no ``group.instance.id``."""
    settings = _settings(tmp_path)
    assert settings.kafka.instance_id is None
    assert "group.instance.id" not in worker_consumer_config(settings, _BOOTSTRAP, replica="2")


def test_instance_id_from_the_file_sets_group_instance_id(tmp_path: Path) -> None:
    """``kafka.instance_id`` becomes the consumer's ``group.instance.id`` (not the producer's)."""
    settings = _settings(tmp_path, instance_id="fraud-worker-0")
    assert worker_consumer_config(settings, _BOOTSTRAP)["group.instance.id"] == "fraud-worker-0"
    assert "group.instance.id" not in worker_producer_config(settings, _BOOTSTRAP)


def test_the_environment_sets_instance_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HEADRACE_KAFKA__INSTANCE_ID`` (a pod name, say) overrides the file and keeps the
    section's other keys."""
    monkeypatch.setenv("HEADRACE_KAFKA__INSTANCE_ID", "ccfraud-7d9f8-x2x4q")
    settings = _settings(tmp_path, instance_id="from-file", group_id="fraud")
    assert settings.kafka.instance_id == "ccfraud-7d9f8-x2x4q"
    assert settings.kafka.group_id == "fraud"
    config = worker_consumer_config(settings, _BOOTSTRAP)
    assert config["group.instance.id"] == "ccfraud-7d9f8-x2x4q"


def test_an_empty_instance_id_means_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty value (``${POD_NAME:-}`` with the variable unset) leaves membership dynamic."""
    monkeypatch.setenv("HEADRACE_KAFKA__INSTANCE_ID", "")
    assert _settings(tmp_path).kafka.instance_id is None


def test_an_instance_id_kafka_would_refuse_names_the_key(tmp_path: Path) -> None:
    """A ``group.instance.id`` Kafka would refuse (a space, a slash) is refused at load."""
    with pytest.raises(ConfigError, match=r"kafka\.instance_id"):
        _settings(tmp_path, instance_id="pod 1/a")


def test_each_replica_appends_its_index() -> None:
    """Replica ``i`` of ``replicas: N`` is ``<instance_id>-i``; a plain run is the id as is."""
    kafka = KafkaSettings(group_id="fraud", instance_id="pod-a")
    assert group_instance_id(kafka, None) == "pod-a"
    assert [group_instance_id(kafka, str(i)) for i in range(3)] == ["pod-a-0", "pod-a-1", "pod-a-2"]
    assert group_instance_id(KafkaSettings(group_id="fraud"), "1") is None


def test_the_replica_index_reaches_the_consumer_and_the_transactional_id(
    tmp_path: Path,
) -> None:
    """The static member id and the exactly-once ``transactional.id`` name the same slot."""
    settings = _settings(tmp_path, instance_id="pod-a", group_id="fraud")
    config = worker_consumer_config(settings, _BOOTSTRAP, replica="1")
    assert config["group.instance.id"] == "pod-a-1"
    assert transactional_id(settings, {REPLICA_INDEX: "1"}) == "headrace-fraud-pod-a-1"
    assert transactional_id(settings, {}) == "headrace-fraud-pod-a"


def test_instance_id_wins_over_a_group_instance_id_property(tmp_path: Path) -> None:
    """``kafka.instance_id`` decides ``group.instance.id`` even when the properties set one."""
    settings = _settings(
        tmp_path, instance_id="pod-a", properties={"group.instance.id": "from-properties"}
    )
    assert worker_consumer_config(settings, _BOOTSTRAP, replica="0")["group.instance.id"] == (
        "pod-a-0"
    )


@pytest.mark.parametrize(
    ("properties", "protocol"),
    [
        ({}, "EAGER"),
        ({"partition.assignment.strategy": "range"}, "EAGER"),
        ({"partition.assignment.strategy": "range,roundrobin"}, "EAGER"),
        ({"partition.assignment.strategy": "cooperative-sticky"}, "COOPERATIVE"),
        ({"partition.assignment.strategy": " Cooperative-Sticky "}, "COOPERATIVE"),
        ({"group.protocol": "consumer"}, "COOPERATIVE"),
    ],
)
def test_the_rebalance_protocol_follows_the_assignment_strategy(
    tmp_path: Path, properties: dict[str, str], protocol: str
) -> None:
    """cooperative-sticky (or KIP-848's ``group.protocol: consumer``) is cooperative; the
    default range and roundrobin are eager."""
    settings = _settings(tmp_path, properties=properties)
    assert rebalance_protocol(worker_consumer_config(settings, _BOOTSTRAP)) == protocol
