"""How consumed offsets are committed: after acknowledgement, or inside transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog
from confluent_kafka import KafkaException, TopicPartition

from stream.errors import TransactionAborted
from stream.kafka.clients import Consumer, KafkaConsumer, KafkaProducer
from stream.types import Partition
from stream.worker.ledger import Ledger

__all__ = ["AckCommitter", "Committer", "TransactionalCommitter"]

_log = structlog.get_logger("headrace.commit")
_TOLERANCE_S = 1e-9  # clock sums like 0.605 - 0.405 fall a hair short of 0.2


class Committer(Protocol):
    """Commits what the ledger says is done; ``before_produce`` opens a transaction if any."""

    def before_produce(self) -> None: ...

    def maybe_commit(self, now: float) -> None: ...

    def commit_now(self, partitions: list[Partition] | None = None) -> None: ...


class AckCommitter:
    """at_least_once: commit offsets whose results the broker acknowledged, every interval."""

    def __init__(self, consumer: Consumer, ledger: Ledger, interval_s: float) -> None:
        self._consumer = consumer
        self._ledger = ledger
        self._interval_s = interval_s
        self._last_commit = 0.0
        self._committed: dict[Partition, int] = {}

    def before_produce(self) -> None:
        return None

    def maybe_commit(self, now: float) -> None:
        if now - self._last_commit >= self._interval_s - _TOLERANCE_S:
            self._last_commit = now
            self._commit(asynchronous=True)

    def commit_now(self, partitions: list[Partition] | None = None) -> None:
        self._commit(asynchronous=False, only=partitions)

    def _commit(self, *, asynchronous: bool, only: list[Partition] | None = None) -> None:
        offsets = {
            partition: offset
            for partition, offset in self._ledger.committable().items()
            if self._committed.get(partition) != offset and (only is None or partition in only)
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, asynchronous=asynchronous)
        except KafkaException as exc:
            # Losing a commit only repeats requests after a restart; keep serving.
            _log.warning("offset commit failed", error=str(exc), offsets=_text(offsets))
            return
        self._committed.update(offsets)


class TransactionalCommitter:
    """exactly_once: results, dead letters and offsets commit together in one transaction."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        ledger: Ledger,
        *,
        interval_s: float,
        clock: Callable[[], float],
        timeout_s: float = 30.0,
    ) -> None:
        self._consumer = consumer
        self._producer: Any = producer.transactional
        self._ledger = ledger
        self._interval_s = interval_s
        self._clock = clock
        self._timeout_s = timeout_s
        self._open_since: float | None = None
        self._producer.init_transactions(timeout_s)

    def before_produce(self) -> None:
        if self._open_since is None:
            self._producer.begin_transaction()
            self._open_since = self._clock()

    def maybe_commit(self, now: float) -> None:
        if (
            self._open_since is not None
            and now - self._open_since >= self._interval_s - _TOLERANCE_S
        ):
            self.commit_now()

    def commit_now(self, partitions: list[Partition] | None = None) -> None:
        del partitions  # a transaction commits every partition's offsets at once
        if self._open_since is None:
            return
        self._producer.flush(self._timeout_s)
        offsets = [
            TopicPartition(p.topic, p.index, offset)
            for p, offset in self._ledger.committable().items()
        ]
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    offsets, self._consumer.group_metadata(), self._timeout_s
                )
            self._producer.commit_transaction(self._timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if error.txn_requires_abort():
                self._producer.abort_transaction(self._timeout_s)
                self._open_since = None
                raise TransactionAborted(str(error)) from exc
            raise
        self._open_since = None


def _text(offsets: dict[Partition, int]) -> str:
    return ", ".join(f"{partition}@{offset}" for partition, offset in sorted(offsets.items()))
