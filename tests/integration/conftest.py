"""Integration fixtures: one Kafka-protocol broker per session, fresh topics per test.

The broker is ``$KAFKA_BOOTSTRAP_SERVERS`` when set (real Kafka, Redpanda ...), else the
embedded Tansu started once on a free port and stopped by pid at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from stream.kafka.admin import ensure_topics
from stream.kafka.broker import EmbeddedBroker, free_port

from .support import Topics
from .workers import Fleet


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """Bootstrap address of the session's broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with EmbeddedBroker(free_port()) as broker:
        yield broker.address


@pytest.fixture
def new_topics(bootstrap: str) -> Iterator[Callable[..., Topics]]:
    """Factory ``new_topics(partitions=1)``: unique topics and group id, deleted afterwards."""
    made: list[str] = []

    def make(partitions: int = 1) -> Topics:
        suffix = uuid.uuid4().hex[:12]
        topics = Topics(
            bootstrap=bootstrap,
            input=f"it-in-{suffix}",
            output=f"it-out-{suffix}",
            dead_letter=f"it-dlq-{suffix}",
            group_id=f"it-group-{suffix}",
            partitions=partitions,
        )
        ensure_topics(bootstrap, dict.fromkeys(topics.names, partitions))
        made.extend(topics.names)
        return topics

    yield make
    if made:
        for future in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(made).values():
            with contextlib.suppress(Exception):  # best effort: the broker may be gone already
                future.result(timeout=10)


@pytest.fixture
def topic_names(new_topics: Callable[..., Topics]) -> Topics:
    """This test's single-partition topics and group id."""
    return new_topics()


@pytest.fixture
def fleet(tmp_path: Path, new_topics: Callable[..., Topics]) -> Iterator[Fleet]:
    """This test's workers, producers and readers, all ended at teardown."""
    del new_topics  # set up first so that it is torn down after the workers are killed
    fleet = Fleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
