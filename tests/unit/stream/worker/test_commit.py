"""Committing offsets: a failed commit is sent again; a transaction that aborts commits nothing
more, and its requests are served again."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import pytest

from pipelines import Pipeline
from pipelines.config import Settings, load_settings
from stream.errors import TransactionAborted, WorkerError
from stream.headers import REQUEST_ID
from stream.kafka.config import worker_producer_config
from stream.kafka.fakes import FakeBroker, FakeClock, FakeConsumer, FakeProducer
from stream.ops.health import Health
from stream.types import Partition
from stream.worker.commit import Committer, TransactionalCommitter
from stream.worker.ledger import Ledger
from stream.worker.loop import Worker
from stream.worker.runtime import REPLICA_INDEX, transactional_id
from tests.unit.stream.support import CCFRAUD, header, records, tensor
from tests.unit.stream.worker.rig import INTERVAL, WAIT, make_rig, offsets


def test_a_failed_asynchronous_commit_is_sent_again(ccfraud: Pipeline) -> None:
    """An interval commit the broker did not store is committed again at the next interval,
    not taken as done: the group's offsets reach the acknowledged end."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.step()
    rig.step(WAIT)
    rig.consumer.fail_commits(1)
    rig.step(INTERVAL)  # commits, and the broker refuses
    assert rig.committed() == {}
    rig.step(INTERVAL)  # hears of the refusal, commits again
    rig.step(INTERVAL)
    assert rig.committed() == {0: 1}


def test_a_failed_final_commit_does_not_stop_the_shutdown(ccfraud: Pipeline) -> None:
    """A refused commit at shutdown leaves the offsets uncommitted (served again after a
    restart) and the shutdown completes."""
    rig = make_rig(ccfraud)
    rig.send(records(tensor(0)))
    rig.step()
    rig.consumer.fail_commits(1)
    rig.worker.shutdown()
    assert len(rig.results()) == 1
    assert rig.committed() == {}


class TransactionalFake:
    """A transactional producer over a :class:`FakeBroker`: records reach the broker, and the
    group's offsets are committed, only when their transaction commits. The first ``aborts``
    commits abort instead (their records are dropped)."""

    def __init__(self, broker: FakeBroker, topics: Mapping[str, int], *, aborts: int = 0):
        self._broker = broker
        self._topics = dict(topics)
        self._aborts = aborts
        self._staging, self._producer = self._stage()
        self.open = False

    def _stage(self) -> tuple[FakeBroker, FakeProducer]:
        staging = FakeBroker()
        for name, partitions in self._topics.items():
            staging.create_topic(name, partitions)
        return staging, FakeProducer(staging)

    def produce(self, topic: str, value: bytes, **record: Any) -> None:
        assert self.open, "produced outside a transaction"
        self._producer.produce(topic, value, **record)

    def poll(self, timeout: float) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        return self._producer.flush(timeout)

    def partitions_for(self, topic: str) -> int:
        return self._topics.get(topic, 0)

    def init_transactions(self, timeout: float) -> None:
        del timeout

    def begin_transaction(self) -> None:
        assert not self.open, "a transaction is open already"
        self.open = True

    def commit_transaction(
        self, offsets: Mapping[Partition, int], group: object, timeout: float
    ) -> None:
        assert self.open, "no transaction is open"
        self.open = False
        self._producer.flush(timeout)
        staged, (self._staging, self._producer) = self._staging, self._stage()
        if self._aborts:
            self._aborts -= 1
            raise TransactionAborted("Broker: Producer fenced (scripted)")
        for topic in self._topics:
            for record in staged.messages(topic):
                self._broker.append(
                    topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=record.partition.index,
                    timestamp_ms=record.timestamp_ms,
                )
        self._broker.commit(str(group), offsets)


class _Node:
    """A worker under exactly_once on the fakes, with its own consumer and producer."""

    def __init__(self, pipeline: Pipeline, broker: FakeBroker, *, aborts: int = 0) -> None:
        base = load_settings(CCFRAUD)
        self.settings: Settings = base.model_copy(
            update={
                "processing": base.processing.model_copy(
                    update={"guarantee": "exactly_once", "commit_interval_ms": 200}
                ),
                "batching": base.batching.model_copy(update={"max_wait_ms": 5}),
            }
        )
        kafka = self.settings.kafka
        self.broker, self.clock, self.health = broker, FakeClock(), Health()
        self.consumer = FakeConsumer(broker, kafka.group_id)
        self.producer = TransactionalFake(
            broker, {kafka.output_topic: 2, kafka.dead_letter_topic: 1}, aborts=aborts
        )

        def committer(ledger: Ledger) -> Committer:
            return TransactionalCommitter(
                self.producer,
                lambda: kafka.group_id,
                ledger,
                interval_s=INTERVAL,
                clock=self.clock,
                health=self.health,
            )

        self.worker = Worker(
            pipeline,
            self.settings,
            self.consumer,
            self.producer,
            committer,
            max_request_bytes=kafka.max_message_bytes,
            clock=self.clock,
            wall_clock_ms=self.clock.wall_ms,
            health=self.health,
        )

    def step(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.worker.run_once()

    def committed(self) -> dict[int, int]:
        found = self.broker.committed(self.settings.kafka.group_id)
        return {partition.index: offset for partition, offset in found.items()}

    def visible(self) -> list[str]:
        """The request ids of the results that committed transactions made visible."""
        results = self.broker.messages(self.settings.kafka.output_topic)
        return sorted(header(result.headers, REQUEST_ID) or "" for result in results)


def _broker(settings: Settings) -> FakeBroker:
    broker = FakeBroker()
    broker.create_topic(settings.kafka.input_topic, 2)
    broker.create_topic(settings.kafka.output_topic, 2)
    broker.create_topic(settings.kafka.dead_letter_topic, 1)
    return broker


def _send(broker: FakeBroker, settings: Settings, number: int, partition: int) -> None:
    broker.append(
        settings.kafka.input_topic,
        records(tensor(number)),
        headers=((REQUEST_ID, f"r{number}".encode()),),
        partition=partition,
    )


def test_requests_of_an_aborted_transaction_are_served_again_once(ccfraud: Pipeline) -> None:
    """When a transaction aborts, the worker stops with an error, reports not-ready and commits
    nothing more, even for requests it serves while stopping; a restarted worker serves every
    request again, and each ends with exactly one visible result."""
    settings = load_settings(CCFRAUD)
    broker = _broker(settings)
    first = _Node(ccfraud, broker, aborts=1)
    for number, partition in enumerate([0, 1, 0, 1]):
        _send(broker, settings, number, partition)
    first.step()
    first.step(WAIT)  # r0..r3 served and produced in a transaction
    _send(broker, settings, 4, 0)
    with pytest.raises(WorkerError, match="transaction aborted"):
        first.step(INTERVAL)  # r4 consumed, then the commit aborts
    ready, reason = first.health.ready()
    assert not ready
    assert "could not commit" in reason
    with pytest.raises(WorkerError, match="could not commit"):
        first.worker.shutdown()  # serves r4, but must not commit r0..r3's offsets

    assert first.committed() == {}
    assert first.visible() == []
    second = _Node(ccfraud, broker)
    second.step()
    second.step(WAIT)
    second.step(INTERVAL)
    assert second.visible() == ["r0", "r1", "r2", "r3", "r4"]
    assert second.committed() == {0: 3, 1: 2}


def test_after_an_abort_while_revoking_nothing_more_is_committed(ccfraud: Pipeline) -> None:
    """A transaction that aborts while revoked partitions are finished leaves the worker
    committing nothing more: the kept partition's next commit would cover results that were
    only in the aborted transaction, so the worker stops with an error instead."""
    settings = load_settings(CCFRAUD)
    broker = _broker(settings)
    node = _Node(ccfraud, broker, aborts=1)
    _send(broker, settings, 0, 0)
    _send(broker, settings, 1, 1)
    node.step()
    node.step(WAIT)  # r0, r1 produced in a transaction
    node.consumer.revoke([Partition(settings.kafka.input_topic, 0)])
    _send(broker, settings, 2, 1)
    with pytest.raises(WorkerError, match="could not commit"):
        for _ in range(3):  # on_revoke's commit aborts; then r2 would be served, committed
            node.step(INTERVAL)
    assert node.committed() == {}
    assert node.visible() == []


def test_offsets_of_results_produced_in_a_committed_transaction_are_committed(
    ccfraud: Pipeline,
) -> None:
    """Without an abort, results and the group's offsets commit together every interval."""
    settings = load_settings(CCFRAUD)
    broker = _broker(settings)
    node = _Node(ccfraud, broker)
    _send(broker, settings, 0, 0)
    node.step()
    node.step(WAIT)
    assert node.visible() == []
    node.step(INTERVAL)
    assert node.visible() == ["r0"]
    assert node.committed() == {0: 1}
    assert offsets(broker.messages(settings.kafka.output_topic)) == [0]


def test_each_worker_slot_has_a_stable_transactional_id() -> None:
    """A worker started again in its slot gets the same transactional id, so that it fences
    its predecessor; replicas of one host, and hosts, get different ones."""
    settings = load_settings(CCFRAUD)
    host = socket.gethostname()
    assert transactional_id(settings, {}) == f"headrace-ccfraud-{host}-0"
    assert transactional_id(settings, {}) == transactional_id(settings, {})
    assert transactional_id(settings, {REPLICA_INDEX: "1"}) == f"headrace-ccfraud-{host}-1"


def test_transactions_time_out_after_ten_commit_intervals_and_at_least_ten_seconds() -> None:
    """The broker aborts a transaction left open by a dead worker after transaction.timeout.ms:
    10 commit intervals, at least 10 s; ``kafka.properties`` may set it."""
    base = load_settings(CCFRAUD)

    def timeout(commit_interval_ms: int, properties: dict[str, Any] | None = None) -> object:
        settings = base.model_copy(
            update={
                "processing": base.processing.model_copy(
                    update={"commit_interval_ms": commit_interval_ms}
                ),
                "kafka": base.kafka.model_copy(update={"properties": properties or {}}),
            }
        )
        config = worker_producer_config(settings, "broker:9092", transactional_id="t")
        return config["transaction.timeout.ms"]

    assert timeout(200) == 10_000
    assert timeout(5_000) == 50_000
    assert timeout(200, {"transaction.timeout.ms": 30_000}) == 30_000
    plain = worker_producer_config(base, "broker:9092")
    assert "transaction.timeout.ms" not in plain
    assert "transactional.id" not in plain
