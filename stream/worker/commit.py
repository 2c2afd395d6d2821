"""How consumed offsets are committed: after acknowledgement, or inside transactions.

- :class:`AckCommitter` (at_least_once) commits every interval, asynchronously, the offsets
  whose outcomes the broker acknowledged; an offset counts as committed only once the broker
  said it stored it, so a commit that failed is sent again at the next interval. The final
  commit (shutdown, revocation) is synchronous: on a broker that does not answer it fails
  after about ``session.timeout.ms``, and the worker goes on stopping.
- :class:`TransactionalCommitter` (exactly_once) commits results, dead letters and offsets in
  one transaction. A transaction that cannot commit is the end of the worker (see its doc).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog

from stream.errors import CommitFailed, KafkaClientError, TransactionAborted, WorkerError
from stream.kafka.protocols import Consumer, TransactionalProducer
from stream.ops.health import Health
from stream.types import Partition
from stream.worker.ledger import Ledger

__all__ = ["TRANSACTION", "AckCommitter", "Committer", "TransactionalCommitter"]

_log = structlog.get_logger("headrace.commit")
_TOLERANCE_S = 1e-9  # clock sums like 0.605 - 0.405 fall a hair short of 0.2

TRANSACTION = "transaction"  # the Health hold of a transaction that could not commit


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
        self._stored: dict[Partition, int] = {}  # what the broker confirmed
        self._failing = False
        consumer.watch_commits(self._ended)

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
            if self._stored.get(partition) != offset and (only is None or partition in only)
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, asynchronous=asynchronous)
        except CommitFailed as exc:
            self._ended({}, str(exc))
            return
        if not asynchronous:
            self._ended(offsets, None)

    def _ended(self, stored: dict[Partition, int], error: str | None) -> None:
        """How a commit ended; what was not stored is committed again at the next interval."""
        self._stored.update(stored)
        if error is not None and not self._failing:
            # Losing a commit only repeats requests after a restart; keep serving.
            _log.warning("offset commit failed; committing again", error=error)
        elif error is None and self._failing:
            _log.info("offset commits succeed again")
        self._failing = error is not None


class TransactionalCommitter:
    """exactly_once: results, dead letters and offsets commit together in one transaction.

    A transaction that cannot commit (aborted, timed out, fenced by another worker) ends the
    worker: ``/readyz`` reports it, TransactionAborted is raised, and from then on nothing is
    produced or committed (WorkerError). The ledger's offsets cover results that were only in
    that transaction, so any later commit would cover requests with no visible result; the
    worker exits instead, and its replacement, taking over the same ``transactional.id``,
    serves them again from the committed offsets.
    """

    def __init__(
        self,
        producer: TransactionalProducer,
        group: Callable[[], object],
        ledger: Ledger,
        *,
        interval_s: float,
        clock: Callable[[], float],
        health: Health | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self._producer = producer
        self._group = group  # the consumer's group metadata, for the offsets
        self._ledger = ledger
        self._interval_s = interval_s
        self._clock = clock
        self._health = health or Health()
        self._timeout_s = timeout_s
        self._open_since: float | None = None
        self._failure: str | None = None
        self._producer.init_transactions(timeout_s)

    def before_produce(self) -> None:
        self._refuse_after_failure()
        if self._open_since is None:
            try:
                self._producer.begin_transaction()
            except KafkaClientError as exc:
                raise self._failed(str(exc)) from exc
            self._open_since = self._clock()

    def maybe_commit(self, now: float) -> None:
        self._refuse_after_failure()
        if (
            self._open_since is not None
            and now - self._open_since >= self._interval_s - _TOLERANCE_S
        ):
            self.commit_now()

    def commit_now(self, partitions: list[Partition] | None = None) -> None:
        del partitions  # a transaction commits every partition's offsets at once
        self._refuse_after_failure()
        if self._open_since is None:
            return
        self._open_since = None
        self._producer.flush(self._timeout_s)
        try:
            self._producer.commit_transaction(
                self._ledger.committable(), self._group(), self._timeout_s
            )
        except (TransactionAborted, KafkaClientError) as exc:
            raise self._failed(str(exc)) from exc

    def _failed(self, reason: str) -> TransactionAborted:
        self._failure = reason
        self._health.hold(TRANSACTION, f"a transaction could not commit: {reason}")
        _log.error("transaction could not commit; nothing more is committed", error=reason)
        return TransactionAborted(reason)

    def _refuse_after_failure(self) -> None:
        if self._failure is not None:
            raise WorkerError(
                f"a transaction could not commit ({self._failure}); nothing more is produced "
                "or committed: restart the worker to serve its requests again"
            )
