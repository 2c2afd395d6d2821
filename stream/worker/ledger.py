"""Per-partition bookkeeping: publish outcomes in offset order, commit only what is acknowledged.

Every consumed offset gets a slot. A slot is *resolved* when its outcome (result or dead
letter) is known, *sent* when handed to the producer in offset order, and *acked* when the
broker confirmed it. The committable offset of a partition is one past the longest acked
prefix, so a crash can repeat requests but never skip one.

A slot holds memory until it is acked: the request's bytes from ``reserve``, and from
``resolve`` on the bytes of its outcome, which the producer holds a copy of until the broker
acknowledges it. :attr:`Ledger.pending_bytes` counts both, for the in-flight byte cap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field

from pipelines.errors import TooLarge
from stream.types import DeadLetter, Envelope, Outcome, Partition

__all__ = ["Ledger", "PartitionLedger", "outcome_bytes"]


@dataclass(slots=True)
class _Slot:
    envelope: Envelope
    rows: int
    outcome: Outcome | None = None
    outcome_bytes: int = 0
    sent: bool = False
    acked: bool = False


@dataclass(slots=True)
class PartitionLedger:
    """The slots of one partition, oldest first."""

    partition: Partition
    slots: deque[_Slot] = field(default_factory=deque)
    by_offset: dict[int, _Slot] = field(default_factory=dict)
    unsent_from: int = 0  # index into slots of the first slot not yet sent
    committed: int | None = None  # next offset to commit, once anything was acked
    bytes: int = 0
    rows: int = 0

    def reserve(self, envelope: Envelope, rows: int) -> None:
        slot = _Slot(envelope, rows)
        self.slots.append(slot)
        self.by_offset[envelope.offset] = slot
        self.bytes += len(envelope.value)
        self.rows += rows

    def resolve(self, outcome: Outcome) -> None:
        slot = self.by_offset[outcome.envelope.offset]
        size = outcome_bytes(outcome)
        self.bytes += size - slot.outcome_bytes
        slot.outcome, slot.outcome_bytes = outcome, size

    def ready(self) -> Iterator[Outcome]:
        """Resolved outcomes whose earlier offsets were all sent, marked sent, in order."""
        while self.unsent_from < len(self.slots):
            slot = self.slots[self.unsent_from]
            if slot.outcome is None:
                return
            slot.sent = True
            self.unsent_from += 1
            yield slot.outcome

    def ack(self, offset: int) -> None:
        slot = self.by_offset.get(offset)
        if slot is None or not slot.sent:
            # a late delivery report from before a revocation, for an offset consumed again
            return
        slot.acked = True
        while self.slots and self.slots[0].acked:
            done = self.slots.popleft()
            del self.by_offset[done.envelope.offset]
            self.bytes -= len(done.envelope.value) + done.outcome_bytes
            self.rows -= done.rows
            self.unsent_from -= 1
            self.committed = done.envelope.offset + 1

    def sent_through(self) -> int | None:
        """One past the last offset of the sent prefix (what a transaction may commit)."""
        if self.unsent_from == 0:
            return self.committed
        return self.slots[self.unsent_from - 1].envelope.offset + 1

    @property
    def pending(self) -> int:
        return len(self.slots)


class Ledger:
    """The ledgers of every assigned partition."""

    def __init__(self) -> None:
        self.partitions: dict[Partition, PartitionLedger] = {}

    def reserve(self, envelope: Envelope, rows: int) -> None:
        ledger = self.partitions.get(envelope.partition)
        if ledger is None:
            ledger = self.partitions[envelope.partition] = PartitionLedger(envelope.partition)
        ledger.reserve(envelope, rows)

    def resolve(self, outcome: Outcome) -> None:
        self.partitions[outcome.envelope.partition].resolve(outcome)

    def resolve_all(self, outcomes: Iterable[Outcome]) -> None:
        """:meth:`resolve` each of ``outcomes``."""
        partitions = self.partitions
        for outcome in outcomes:
            partitions[outcome.envelope.partition].resolve(outcome)

    def ready(self, held: Container[Partition] = ()) -> Iterator[Outcome]:
        """Outcomes to produce now, in offset order per partition; none of ``held`` ones.

        ``held`` is read after each outcome, so a partition that becomes held while its
        outcomes are produced stops there.
        """
        for partition, ledger in self.partitions.items():
            if partition in held:
                continue
            for outcome in ledger.ready():
                yield outcome
                if partition in held:
                    break

    def ack(self, envelope: Envelope) -> None:
        ledger = self.partitions.get(envelope.partition)
        if ledger is not None:
            ledger.ack(envelope.offset)

    def committable(self) -> dict[Partition, int]:
        return {
            partition: ledger.committed
            for partition, ledger in self.partitions.items()
            if ledger.committed is not None
        }

    def forget(self, partitions: list[Partition]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)

    @property
    def pending(self) -> int:
        return sum(ledger.pending for ledger in self.partitions.values())

    @property
    def pending_bytes(self) -> int:
        """Bytes of requests and of their outcomes not yet acknowledged."""
        return sum(ledger.bytes for ledger in self.partitions.values())

    @property
    def pending_rows(self) -> int:
        return sum(ledger.rows for ledger in self.partitions.values())


def outcome_bytes(outcome: Outcome) -> int:
    """What an outcome adds to memory until acknowledged: a result's bytes, or the request's
    bytes again in its dead letter (none for ``too_large``, published without them)."""
    if isinstance(outcome, DeadLetter):
        return 0 if isinstance(outcome.error, TooLarge) else len(outcome.envelope.value)
    return len(outcome.value)
