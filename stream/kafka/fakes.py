"""In-memory stand-ins for the clock, the broker and the metrics sink.

They implement the protocols the worker is written against (:class:`~stream.kafka.Consumer`,
:class:`~stream.kafka.Producer`, :class:`~stream.metrics.Metrics`), so a pipeline can be driven
one ``run_once()`` at a time with no Kafka and no sleeping::

    clock, broker = FakeClock(), FakeBroker()
    broker.create_topic("requests", partitions=2)
    consumer, producer = FakeConsumer(broker, "group"), FakeProducer(broker)
    broker.append("requests", b'[{"x": 1}]', partition=0)
    ...                                    # build the worker with consumer, producer, clock
    worker.run_once()
    clock.advance(0.005)                   # the micro-batch is due now
    worker.run_once()
    broker.messages("results")             # what the worker published

Rebalance callbacks run inside ``consume`` and delivery callbacks inside ``poll``/``flush``,
as they do with librdkafka; failures are scripted with :meth:`FakeProducer.fail_next`,
:meth:`FakeProducer.hold` and :meth:`FakeConsumer.revoke`, and a rebalance of either protocol
with :meth:`FakeConsumer.rebalance`.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from stream.errors import CommitFailed
from stream.types import Envelope, Headers, Partition

if TYPE_CHECKING:
    from stream.kafka.config import RebalanceProtocol
    from stream.kafka.protocols import CommitCallback, DeliveryCallback, RebalanceCallback

__all__ = [
    "Commit",
    "FakeBroker",
    "FakeClock",
    "FakeConsumer",
    "FakeProducer",
    "RecordingMetrics",
]

_DEFAULT_DELIVERY_ERROR = "_MSG_TIMED_OUT: Local: Message timed out"


class FakeClock:
    """Monotonic seconds that move only when :meth:`advance` is called.

    Time is kept in whole nanoseconds, so ``advance(0.004); advance(0.001)`` reads exactly
    ``0.005``. :meth:`wall_ms` is the matching wall clock (epoch milliseconds), for the
    worker's ``wall_clock_ms``.
    """

    def __init__(self, start: float = 0.0, *, epoch_ms: int = 1_700_000_000_000) -> None:
        self._ns = round(start * 1e9)
        self._epoch_ms = epoch_ms

    def __call__(self) -> float:
        """The current time in seconds."""
        return self._ns / 1e9

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (never backward: it is monotonic)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back {-seconds} s")
        self._ns += round(seconds * 1e9)

    def wall_ms(self) -> int:
        """Epoch milliseconds: ``epoch_ms`` at start, moving with :meth:`advance`."""
        return self._epoch_ms + self._ns // 1_000_000


class FakeBroker:
    """Topics of partitions of records, and the committed offsets of each consumer group.

    Records are :class:`~stream.types.Envelope` values: they carry their partition, offset,
    key, value, headers and timestamp, as a consumer would receive them.
    """

    def __init__(self) -> None:
        self._topics: dict[str, list[list[Envelope]]] = {}
        self._committed: dict[str, dict[Partition, int]] = {}
        self._round_robin: dict[str, int] = {}

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create topic ``name`` with ``partitions`` empty partitions (once)."""
        if name in self._topics:
            raise ValueError(f"topic '{name}' already exists")
        if partitions < 1:
            raise ValueError(f"topic '{name}' needs at least one partition, not {partitions}")
        self._topics[name] = [[] for _ in range(partitions)]

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has; 0 when it does not exist."""
        return len(self._topics.get(topic, ()))

    def append(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        timestamp_ms: int = 0,
    ) -> Envelope:
        """Write a record at the end of a partition; returns it with its offset.

        Without ``partition``, a key picks one by its CRC32 (stable across processes) and
        records without a key go round-robin.
        """
        log = self._log(topic)
        index = self._choose(topic, key) if partition is None else partition
        if not 0 <= index < len(log):
            raise ValueError(f"topic '{topic}' has no partition {index}")
        record = Envelope(
            Partition(topic, index), len(log[index]), key, value, headers, timestamp_ms
        )
        log[index].append(record)
        return record

    def messages(self, topic: str, partition: int | None = None) -> list[Envelope]:
        """The records of one partition in offset order, or of all, partition by partition."""
        log = self._log(topic)
        if partition is not None:
            return list(log[partition])
        return [record for records in log for record in records]

    def read(self, partition: Partition, offset: int, count: int) -> list[Envelope]:
        """Up to ``count`` records of ``partition`` from ``offset`` on."""
        return self._log(partition.topic)[partition.index][offset : offset + count]

    def commit(self, group_id: str, offsets: Mapping[Partition, int]) -> None:
        """Store ``offsets`` (the next offset to read) for ``group_id``."""
        self._committed.setdefault(group_id, {}).update(offsets)

    def committed(self, group_id: str) -> dict[Partition, int]:
        """The offsets ``group_id`` committed, by partition."""
        return dict(self._committed.get(group_id, {}))

    def _log(self, topic: str) -> list[list[Envelope]]:
        try:
            return self._topics[topic]
        except KeyError:
            raise KeyError(f"no topic '{topic}'; create it with create_topic") from None

    def _choose(self, topic: str, key: bytes | None) -> int:
        count = len(self._topics[topic])
        if key is not None:
            return zlib.crc32(key) % count
        index = self._round_robin.get(topic, 0)
        self._round_robin[topic] = index + 1
        return index % count


@dataclass(frozen=True, slots=True)
class Commit:
    """One call of :meth:`FakeConsumer.commit`: the offsets and whether it was asynchronous."""

    offsets: dict[Partition, int]
    asynchronous: bool


class FakeConsumer:
    """A group consumer of a :class:`FakeBroker`, the only member of its group.

    The first ``consume`` after ``subscribe`` assigns every partition of the subscribed
    topics and calls ``on_assign``; reading starts at the group's committed offset, else at
    the beginning (``auto.offset.reset=earliest``). ``consume`` returns records in offset order
    per partition, taking one partition after the other round-robin, and skips paused
    partitions. :meth:`revoke` and :meth:`assign` script a rebalance, which, as with
    librdkafka, happens inside the next ``consume``. Every commit is kept in :attr:`commits`;
    how an asynchronous one ended reaches the :meth:`watch_commits` callback inside the next
    ``consume``, and :meth:`fail_commits` scripts refused ones.

    As with librdkafka, :meth:`lag` knows only the partitions a record was consumed from,
    :meth:`close` revokes the assignment (calling ``on_revoke``) before leaving the group,
    and every call but ``close`` raises ``RuntimeError`` once the consumer is closed.

    :meth:`rebalance` hands the consumer a new assignment the way ``rebalance_protocol`` does
    it: EAGER (range, roundrobin: the default) revokes the whole assignment, then assigns the
    new one from the committed offsets; COOPERATIVE (cooperative-sticky) revokes and assigns
    only the partitions that change hands, and the kept ones read on from where they were.
    """

    def __init__(
        self,
        broker: FakeBroker,
        group_id: str,
        *,
        rebalance_protocol: RebalanceProtocol = "EAGER",
    ) -> None:
        self.broker = broker
        self.group_id = group_id
        self.rebalance_protocol: RebalanceProtocol = rebalance_protocol
        self.commits: list[Commit] = []
        self.timeouts: list[float] = []  # of each consume, in order
        self.closed = False
        self.unreachable: str | None = None  # set to make reachable() fail
        self._topics: list[str] = []
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._assign_on_consume = False
        self._positions: dict[Partition, int] = {}
        self._consumed: set[Partition] = set()  # a record was consumed: the position is known
        self._paused: set[Partition] = set()
        self._next = 0  # round-robin cursor into the assignment
        self._rebalances: deque[Callable[[], None]] = deque()  # run inside consume
        self._on_commit: CommitCallback | None = None
        self._commit_reports: deque[tuple[dict[Partition, int], str | None]] = deque()
        self._commit_failures: deque[str] = deque()

    def subscribe(
        self, topics: Sequence[str], on_assign: RebalanceCallback, on_revoke: RebalanceCallback
    ) -> None:
        """Subscribe to ``topics``; their partitions are assigned on the next ``consume``."""
        self._check_open()
        self._topics = list(topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._assign_on_consume = True

    def consume(self, max_messages: int, timeout: float) -> list[Envelope]:
        """Run pending rebalances, then return up to ``max_messages`` records (never waits;
        the ``timeout`` it was given is kept in :attr:`timeouts`)."""
        self.timeouts.append(timeout)
        self._check_open()
        if self._assign_on_consume:
            self._assign_on_consume = False
            self.assign(
                [
                    Partition(topic, index)
                    for topic in self._topics
                    for index in range(self.broker.partitions(topic))
                ]
            )
        while self._commit_reports:
            report = self._commit_reports.popleft()
            if self._on_commit is not None:
                self._on_commit(*report)
        while self._rebalances:
            self._rebalances.popleft()()
        return self._fetch(max_messages)

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        """Store ``offsets`` on the broker for this group and record the call.

        A commit scripted to fail stores nothing: a synchronous one raises CommitFailed, an
        asynchronous one reports the error.
        """
        self._check_open()
        if not offsets:
            return
        self.commits.append(Commit(dict(offsets), asynchronous))
        error = self._commit_failures.popleft() if self._commit_failures else None
        if error is None:
            self.broker.commit(self.group_id, offsets)
        if not asynchronous and error is not None:
            raise CommitFailed(error)
        if asynchronous:
            self._commit_reports.append(({} if error else dict(offsets), error))

    def watch_commits(self, callback: CommitCallback) -> None:
        """Have ``callback`` hear how each asynchronous commit ended, in the next ``consume``."""
        self._on_commit = callback

    def fail_commits(
        self, count: int = 1, error: str = "_WAIT_COORD: Local: Waiting for coordinator"
    ) -> None:
        """Make the next ``count`` commits fail with ``error``, storing nothing."""
        self._commit_failures.extend([error] * count)

    def pause(self, partitions: Sequence[Partition]) -> None:
        """Stop returning records of ``partitions`` until they are resumed."""
        self._check_open()
        self._paused.update(partitions)

    def resume(self, partitions: Sequence[Partition]) -> None:
        """Return records of ``partitions`` again."""
        self._check_open()
        self._paused.difference_update(partitions)

    def paused(self) -> list[Partition]:
        """The assigned partitions that are paused, sorted."""
        return sorted(self._paused & self._positions.keys())

    def assignment(self) -> list[Partition]:
        """The assigned partitions, sorted."""
        self._check_open()
        return sorted(self._positions)

    def lag(self) -> dict[Partition, int]:
        """Records between the position and the end of each assigned partition consumed from.

        Like librdkafka, which knows a position only once a record of the partition was
        consumed, partitions not consumed from since their assignment are left out.
        """
        self._check_open()
        return {
            partition: len(self.broker.messages(partition.topic, partition.index)) - position
            for partition, position in self._positions.items()
            if partition in self._consumed
        }

    def reachable(self, timeout: float) -> str | None:
        """Always reachable, unless :attr:`unreachable` holds a reason."""
        del timeout
        self._check_open()
        return self.unreachable

    def close(self) -> None:
        """Revoke the assignment (``on_revoke`` runs here, as in librdkafka) and leave the group.

        Scripted rebalances not yet run are dropped; closing again does nothing.
        """
        if self.closed:
            return
        self._rebalances.clear()
        if self._positions:
            self._revoke_now(None)
        self.closed = True

    def assign(self, partitions: Sequence[Partition]) -> None:
        """Assign ``partitions`` in the next ``consume`` and call ``on_assign`` there."""
        self._rebalances.append(partial(self._assign_now, list(partitions)))

    def rebalance(self, partitions: Sequence[Partition]) -> None:
        """Make ``partitions`` the whole assignment in the next ``consume``, as a rebalance of
        :attr:`rebalance_protocol` does (see the class)."""
        self._rebalances.append(partial(self._rebalance_now, list(partitions)))

    def _rebalance_now(self, partitions: list[Partition]) -> None:
        if self.rebalance_protocol == "EAGER":
            if self._positions:
                self._revoke_now(None)
            self._assign_now(partitions)
            return
        taken = [p for p in self.assignment() if p not in partitions]
        added = [p for p in partitions if p not in self._positions]
        if taken:
            self._revoke_now(taken)
        if added:
            self._assign_now(added)

    def revoke(self, partitions: Sequence[Partition] | None = None) -> None:
        """Revoke ``partitions`` (default: all) in the next ``consume``, calling ``on_revoke``.

        The callback runs while the partitions are still assigned, so it can commit them;
        a later assignment reads from the group's committed offsets again.
        """
        self._rebalances.append(
            partial(self._revoke_now, None if partitions is None else list(partitions))
        )

    def _assign_now(self, partitions: list[Partition]) -> None:
        committed = self.broker.committed(self.group_id)
        for partition in partitions:
            self._positions.setdefault(partition, committed.get(partition, 0))
        if self._on_assign is not None:
            self._on_assign(list(partitions))

    def _revoke_now(self, partitions: list[Partition] | None) -> None:
        if partitions is None:
            partitions = self.assignment()
        revoked = [p for p in partitions if p in self._positions]
        if self._on_revoke is not None:
            self._on_revoke(revoked)
        for partition in revoked:
            del self._positions[partition]
            self._consumed.discard(partition)
            self._paused.discard(partition)

    def _fetch(self, max_messages: int) -> list[Envelope]:
        found: list[Envelope] = []
        partitions = self.assignment()
        idle = 0  # partitions in a row that had nothing to give
        while partitions and len(found) < max_messages and idle < len(partitions):
            partition = partitions[self._next % len(partitions)]
            self._next += 1
            records = (
                []
                if partition in self._paused
                else self.broker.read(partition, self._positions[partition], 1)
            )
            if records:
                found += records
                self._positions[partition] += 1
                self._consumed.add(partition)
                idle = 0
            else:
                idle += 1
        return found

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"consumer of group '{self.group_id}' is closed")


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers
    partition: int | None
    on_delivery: DeliveryCallback
    timestamp_ms: int


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class FakeProducer:
    """A producer that writes to a :class:`FakeBroker` when a delivery is reported.

    ``produce`` only queues; ``poll`` reports the deliveries queued before it was called and
    ``flush`` reports until the queue is empty (including records produced by delivery
    callbacks). A delivered record is appended to its topic, at ``partition`` or else by key,
    stamped like librdkafka with the time of ``produce``: epoch milliseconds from
    ``wall_clock_ms`` (the system clock unless given, e.g. :meth:`FakeClock.wall_ms`).
    Deliveries fail for a missing topic or partition, a value over ``max_message_bytes``,
    or as scripted with :meth:`fail_next`; :meth:`hold` keeps them unreported.
    """

    def __init__(
        self,
        broker: FakeBroker,
        *,
        max_message_bytes: int | None = None,
        wall_clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.broker = broker
        self.max_message_bytes = max_message_bytes
        self._wall_clock_ms = wall_clock_ms
        self._queue: deque[_Outgoing] = deque()
        self._failures: deque[tuple[str | None, str]] = deque()
        self._held = False
        self.poll_timeouts: list[float] = []  # of each poll, in order

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Headers,
        partition: int | None,
        on_delivery: DeliveryCallback,
    ) -> None:
        """Queue a record; ``on_delivery`` is called from ``poll`` or ``flush``."""
        self._queue.append(
            _Outgoing(topic, value, key, headers, partition, on_delivery, self._wall_clock_ms())
        )

    def poll(self, timeout: float) -> None:
        """Report the deliveries queued so far (none while held); never waits (the
        ``timeout`` it was given is kept in :attr:`poll_timeouts`)."""
        self.poll_timeouts.append(timeout)
        if not self._held:
            self.deliver(len(self._queue))

    def flush(self, timeout: float) -> int:
        """Report every delivery unless held; returns how many are left unreported."""
        del timeout
        while self._queue and not self._held:
            self.deliver(len(self._queue))
        return len(self._queue)

    def partitions_for(self, topic: str) -> int:
        """How many partitions ``topic`` has on the broker; 0 when it does not exist."""
        return self.broker.partitions(topic)

    @property
    def pending(self) -> int:
        """Records produced whose delivery was not reported yet."""
        return len(self._queue)

    def fail_next(
        self, count: int = 1, error: str = _DEFAULT_DELIVERY_ERROR, *, topic: str | None = None
    ) -> None:
        """Make the next ``count`` deliveries (to ``topic``, if given) fail with ``error``."""
        self._failures.extend([(topic, error)] * count)

    def hold(self) -> None:
        """Keep deliveries unreported: ``poll`` reports none and ``flush`` leaves them."""
        self._held = True

    def release(self) -> None:
        """Undo :meth:`hold`: the next ``poll`` or ``flush`` reports the queued deliveries."""
        self._held = False

    def deliver(self, count: int = 1) -> None:
        """Report the oldest ``count`` deliveries now, even while held."""
        for _ in range(min(count, len(self._queue))):
            outgoing = self._queue.popleft()
            outgoing.on_delivery(self._send(outgoing))

    def _send(self, outgoing: _Outgoing) -> str | None:
        """Append the record to the broker; the delivery error text, or None when stored."""
        scripted = self._scripted_failure(outgoing.topic)
        if scripted is not None:
            return scripted
        count = self.broker.partitions(outgoing.topic)
        if count == 0:
            return f"_UNKNOWN_TOPIC: Local: Unknown topic '{outgoing.topic}'"
        if outgoing.partition is not None and not 0 <= outgoing.partition < count:
            return f"_UNKNOWN_PARTITION: Local: Unknown partition {outgoing.partition}"
        size = len(outgoing.value)
        if self.max_message_bytes is not None and size > self.max_message_bytes:
            return (
                f"MSG_SIZE_TOO_LARGE: Broker: Message size too large "
                f"({size} > {self.max_message_bytes} bytes)"
            )
        self.broker.append(
            outgoing.topic,
            outgoing.value,
            key=outgoing.key,
            headers=outgoing.headers,
            partition=outgoing.partition,
            timestamp_ms=outgoing.timestamp_ms,
        )
        return None

    def _scripted_failure(self, topic: str) -> str | None:
        for position, (wanted, error) in enumerate(self._failures):
            if wanted is None or wanted == topic:
                del self._failures[position]
                return error
        return None


class RecordingMetrics:
    """A :class:`~stream.metrics.Metrics` sink that keeps every report, for assertions."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []  # (rows, seconds)
        self.step_times: list[tuple[tuple[str, ...], tuple[int, ...]]] = []  # (names, ns)
        self.served_requests: list[tuple[int, int, int]] = []  # (rows, request ms, now ms)
        self.dead_letter_types: list[str] = []
        self.inflight_rows: list[int] = []
        self.lags: dict[int, int] = {}  # partition -> messages behind, latest report

    def batch(self, rows: int, seconds: float) -> None:
        """Record a served micro-batch."""
        self.batches.append((rows, seconds))

    def steps(self, names: Sequence[str], nanoseconds: Sequence[int]) -> None:
        """Record the time each step took on a micro-batch."""
        self.step_times.append((tuple(names), tuple(nanoseconds)))

    def served(self, rows: Sequence[int], timestamps_ms: Sequence[int], now_ms: int) -> None:
        """Record acknowledged results, one entry each."""
        self.served_requests += [
            (n, stamp, now_ms) for n, stamp in zip(rows, timestamps_ms, strict=True)
        ]

    def dead_lettered(self, error_type: str) -> None:
        """Record an acknowledged dead letter."""
        self.dead_letter_types.append(error_type)

    def inflight(self, rows: int) -> None:
        """Record the in-flight row count."""
        self.inflight_rows.append(rows)

    def lag(self, partition: int, messages: int) -> None:
        """Record how far a partition is behind."""
        self.lags[partition] = messages
