"""What the worker needs of Kafka: a consumer and a producer, and the callbacks they call.

The worker, the committers and the publisher are written against these protocols; the
confluent-kafka adapters (:mod:`stream.kafka.clients`) and the in-memory fakes
(:mod:`stream.kafka.fakes`) implement them, held alike by one contract suite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from stream.types import Envelope, Headers, Partition

__all__ = [
    "CommitCallback",
    "Consumer",
    "DeliveryCallback",
    "ErrorCallback",
    "Producer",
    "RebalanceCallback",
    "TransactionalProducer",
]

DeliveryCallback = Callable[[str | None], None]  # the error text, or None when acknowledged
# The partitions that move in a rebalance (see Consumer)
RebalanceCallback = Callable[[list[Partition]], None]
ErrorCallback = Callable[[str], None]  # the text of an error no call returned
# How an asynchronous commit ended: the offsets the broker stored, and the error of those it
# did not store (None when it stored them all).
CommitCallback = Callable[[dict[Partition, int], str | None], None]


class Consumer(Protocol):
    """What the worker needs of a group consumer; rebalance callbacks run inside consume.

    ``on_assign`` gets the partitions added to the assignment and ``on_revoke`` those taken
    from it, still assigned while it runs (so it can commit them). Under the eager rebalance
    protocol that is the whole assignment at every rebalance; under the cooperative one
    (``cooperative-sticky``) only the partitions that change hands: the others stay assigned
    and are read from throughout. A callback that treats its list as a change of the
    assignment is right under both.
    """

    def subscribe(
        self, topics: Sequence[str], on_assign: RebalanceCallback, on_revoke: RebalanceCallback
    ) -> None: ...

    def consume(self, max_messages: int, timeout: float) -> list[Envelope]: ...

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        """Commit ``offsets`` (the next offset to read); CommitFailed when it is refused.

        An asynchronous commit only starts here: how it ended goes to the callback of
        :meth:`watch_commits`. A synchronous one waits (on a broker that does not answer, up
        to about ``session.timeout.ms``).
        """
        ...

    def watch_commits(self, callback: CommitCallback) -> None:
        """Have ``callback`` hear how each asynchronous commit ended, inside a later consume."""
        ...

    def pause(self, partitions: Sequence[Partition]) -> None: ...

    def resume(self, partitions: Sequence[Partition]) -> None: ...

    def assignment(self) -> list[Partition]: ...

    def lag(self) -> dict[Partition, int]:
        """Messages between the position and the end of each assigned partition, where known."""
        ...

    def reachable(self, timeout: float) -> str | None:
        """None when the broker answers a metadata request in time, else why not."""
        ...

    def close(self) -> None: ...


class Producer(Protocol):
    """What the worker needs of a producer; ``on_delivery`` runs inside ``poll``/``flush``."""

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Headers,
        partition: int | None,
        on_delivery: DeliveryCallback,
    ) -> None: ...

    def poll(self, timeout: float) -> None: ...

    def flush(self, timeout: float) -> int: ...

    def partitions_for(self, topic: str) -> int: ...


class TransactionalProducer(Producer, Protocol):
    """A producer with the transaction calls of exactly-once mode."""

    def init_transactions(self, timeout: float) -> None:
        """Register the transactional id, fencing off an older producer that used it."""
        ...

    def begin_transaction(self) -> None: ...

    def commit_transaction(
        self, offsets: Mapping[Partition, int], group: object, timeout: float
    ) -> None:
        """Commit the open transaction with the consumer ``group``'s ``offsets`` in it.

        TransactionAborted when it had to be aborted (it is then); KafkaClientError when it
        could not be committed for another reason (timed out, fenced: a fatal error).
        """
        ...
