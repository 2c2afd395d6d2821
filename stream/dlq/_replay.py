"""``dlq replay``: dead letters back to the input topic, progress in a consumer group.

Each matching dead letter is re-published with its original key, value and headers, the error
headers of SPEC §5 (and ``x-original-bytes``) removed, ``x-replayed-from: <dlq
topic>:<partition>:<offset>`` added, to the request's original partition when the input topic
has it (else by key).

A replay is a new request made by the operator: its ``x-deadline`` is dropped too, since the
caller's deadline has passed by then and the worker would only expire it again (a replayed
record also gets a new Kafka timestamp, so ``processing.max_request_age_ms`` counts from the
replay). ``expired`` dead letters are requests nobody waited for any more: a replay skips them
unless ``--error-type expired`` asks for them by name.

Progress is kept in a consumer group of its own, ``<group_id>-dlq-replay``, or
``<group_id>-dlq-replay-<types sorted, joined by +>`` with ``--error-type``, so a typed and an
untyped replay move independently. Offsets are committed only after the broker acknowledged
every replayed record before them; dead letters the filters skip are committed past too.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from pipelines.config import Settings
from stream.dlq._common import (
    TIMEOUT_S,
    broker_address,
    error_type_of,
    failed_at,
    open_reader,
    partition_count,
    read_letters,
)
from stream.errors import CommitFailed, DlqError, KafkaClientError
from stream.headers import (
    DEADLINE,
    DROPPED_HEADERS,
    ERROR_HEADERS,
    ORIGINAL_BYTES,
    REPLAYED_FROM,
)
from stream.kafka.clients import KafkaProducer
from stream.kafka.config import dlq_producer_config
from stream.kafka.readers import PartitionReader
from stream.types import Envelope, Headers, Partition

__all__ = [
    "ReplayOptions",
    "ReplaySummary",
    "parse_since",
    "replay",
    "replay_group",
    "replay_headers",
]

_DROPPED = frozenset({*ERROR_HEADERS, ORIGINAL_BYTES, DROPPED_HEADERS, REPLAYED_FROM, DEADLINE})
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_FLUSH_S = 60.0  # acknowledgements of one batch of replays (up to 500 records)
_SKIP_TYPE, _SKIP_SINCE = "not a selected --error-type", "failed before --since"
_SKIP_TOO_LARGE = "too_large, not replayable"
_SKIP_EXPIRED = "expired, replayed only with --error-type expired"


# ---------------------------------------------------------------- pure rules


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: an ISO-8601 time (UTC when it names no zone) or ``30s``/``30m``/``2h``/``1d``
    before ``now``."""
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            "expected an ISO-8601 time (2024-05-01T12:00:00Z) or a duration like 30m, 2h, 1d; "
            f"got {text!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def replay_headers(letter: Envelope) -> Headers:
    """The request's own headers, in order, less ``x-deadline``, then ``x-replayed-from``
    naming the dead letter."""
    own = tuple((k, v) for k, v in letter.headers if k.lower() not in _DROPPED)
    where = f"{letter.partition.topic}:{letter.partition.index}:{letter.offset}"
    return (*own, (REPLAYED_FROM, where.encode()))


def replay_group(group_id: str, error_types: Iterable[str]) -> str:
    """The consumer group that keeps a replay's progress: one per set of ``--error-type``."""
    types = sorted(set(error_types))
    return f"{group_id}-dlq-replay" + (f"-{'+'.join(types)}" if types else "")


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What ``dlq replay`` selects (types, since), how many it replays, and whether for real."""

    error_types: frozenset[str] = frozenset()
    since: datetime | None = None
    limit: int | None = None
    dry_run: bool = False

    def skip_reason(self, letter: Envelope) -> str | None:
        """Why ``letter`` is not replayed, or None when it is."""
        error_type = error_type_of(letter)
        if self.error_types and error_type not in self.error_types:
            return _SKIP_TYPE
        if error_type == "expired" and not self.error_types:
            return _SKIP_EXPIRED
        if self.since is not None and failed_at(letter) < self.since:
            return _SKIP_SINCE
        if error_type == "too_large" or letter.header(ORIGINAL_BYTES) is not None:
            return _SKIP_TOO_LARGE
        return None


# ---------------------------------------------------------------- replay


def _start_offsets(
    reader: PartitionReader,
    topic: str,
    partitions: int,
    since: datetime | None,
    timeout: float,
) -> dict[int, int]:
    """Where to start per partition: the group's committed offset, else the first one; with
    ``since`` no earlier than its offsets_for_times answer (a partition with none is left out).
    """
    wanted = [Partition(topic, index) for index in range(partitions)]
    committed = reader.committed(wanted, timeout)
    starts = {p.index: max(committed[p], reader.watermarks(p, timeout)[0]) for p in wanted}
    if since is not None:
        found = reader.offsets_for_times(wanted, int(since.timestamp() * 1000), timeout)
        starts = {  # a partition with no record at or after `since` is left out
            p.index: max(starts[p.index], found[p]) for p in wanted if p in found
        }
    return starts


@dataclass
class ReplaySummary:
    """What one ``dlq replay`` did, or would do on a dry run."""

    source: str
    target: str
    group: str
    dry_run: bool
    replayed: list[Envelope] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    too_large: list[Envelope] = field(default_factory=list)

    def line(self) -> str:
        """``replayed N, skipped M (by reason), to topic X``, and where progress is kept."""
        reasons = "; ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        skipped = sum(self.skipped.values())
        detail = f" ({reasons})" if reasons else ""
        if self.dry_run:
            return (
                f"dry run: would replay {len(self.replayed)}, skip {skipped}{detail}, to topic "
                f"{self.target}, from {self.source}; nothing produced or committed"
            )
        return (
            f"replayed {len(self.replayed)}, skipped {skipped}{detail}, to topic {self.target}, "
            f"from {self.source} (progress in consumer group {self.group})"
        )


class _Replayer:
    """One replay: decides, produces and commits batch by batch, commits only acknowledged."""

    def __init__(
        self,
        reader: PartitionReader,
        producer: KafkaProducer | None,
        options: ReplayOptions,
        summary: ReplaySummary,
        *,
        input_partitions: int,
        starts: dict[int, int],
    ) -> None:
        self._reader, self._producer = reader, producer
        self._options, self._summary = options, summary
        self._input_partitions = input_partitions
        self._cursor, self._committed = dict(starts), dict(starts)
        self._sent: list[tuple[int, int]] = []
        self._acked: set[tuple[int, int]] = set()
        self._errors: dict[tuple[int, int], str] = {}

    def run(self, batches: Iterator[list[Envelope]]) -> None:
        for batch in batches:
            limited = self._handle(batch)
            self._settle()
            if limited:
                return

    def _limited(self) -> bool:
        limit = self._options.limit
        return limit is not None and len(self._summary.replayed) >= limit

    def _handle(self, batch: list[Envelope]) -> bool:
        """Replay or skip each dead letter in order; True once ``--limit`` is reached or a
        replay was refused (nothing after it is produced then)."""
        for letter in batch:
            if self._limited() or self._errors:
                return True
            reason = self._options.skip_reason(letter)
            if reason is None:
                self._summary.replayed.append(letter)
                self._publish(letter)
            else:
                self._summary.skipped[reason] += 1
                if reason == _SKIP_TOO_LARGE:
                    self._summary.too_large.append(letter)
            self._cursor[letter.partition.index] = letter.offset + 1
        return self._limited()

    def _publish(self, letter: Envelope) -> None:
        if self._producer is None:
            return
        where = (letter.partition.index, letter.offset)
        self._sent.append(where)
        self._producer.produce(
            self._summary.target,
            letter.value,
            key=letter.key,
            headers=replay_headers(letter),
            partition=self._target_partition(letter),
            on_delivery=partial(self._delivered, where),
        )
        self._producer.poll(0)  # a refusal at once (too large) stops the replay before the next

    def _target_partition(self, letter: Envelope) -> int | None:
        """The request's own partition when it came from this input topic, else by key."""
        index = letter.header_text("x-source-partition") or ""
        if letter.header_text("x-source-topic") != self._summary.target or not index.isdigit():
            return None
        return int(index) if int(index) < self._input_partitions else None

    def _delivered(self, where: tuple[int, int], error: str | None) -> None:
        if error is None:
            self._acked.add(where)
        else:
            self._errors[where] = error

    def _settle(self) -> None:
        """Wait for acknowledgements, then commit up to the first unacknowledged replay."""
        if self._producer is None:
            return  # dry run: commit nothing
        self._producer.flush(_FLUSH_S)
        failed = [where for where in self._sent if where not in self._acked]
        self._sent = []
        offsets = dict(self._cursor)
        for index, offset in failed:
            offsets[index] = min(offsets[index], offset)
        moved = {i: o for i, o in offsets.items() if o > self._committed[i]}
        if moved:
            topic = self._summary.source
            commit = {Partition(topic, index): offset for index, offset in moved.items()}
            self._reader.commit(commit, asynchronous=False)
            self._committed.update(moved)
        if failed:
            index, offset = failed[0]
            error = self._errors.get(failed[0], f"no acknowledgement within {_FLUSH_S:g} s")
            raise DlqError(
                f"{len(failed)} replayed record(s) not acknowledged by the broker, first "
                f"{self._summary.source}:{index}:{offset}: {error}; progress is committed "
                "up to them, so the next run replays them again"
            )


def replay(settings: Settings, options: ReplayOptions, *, timeout: float = 0) -> ReplaySummary:
    """Re-publish the dead letters ``options`` select to the input topic; see the module doc."""
    timeout = timeout or TIMEOUT_S
    kafka = settings.kafka
    bootstrap = broker_address(kafka)
    dlq_partitions = partition_count(kafka, bootstrap, "dead_letter_topic", timeout)
    input_partitions = partition_count(kafka, bootstrap, "input_topic", timeout)
    group = replay_group(kafka.group_id, options.error_types)
    summary = ReplaySummary(kafka.dead_letter_topic, kafka.input_topic, group, options.dry_run)
    reader = open_reader(kafka, bootstrap, group)
    producer = None
    if not options.dry_run:
        producer = KafkaProducer(dlq_producer_config(kafka, bootstrap))
    try:
        topic = kafka.dead_letter_topic
        starts = _start_offsets(reader, topic, dlq_partitions, options.since, timeout)
        replayer = _Replayer(
            reader, producer, options, summary, input_partitions=input_partitions, starts=starts
        )
        replayer.run(read_letters(reader, topic, starts, timeout))
    except (KafkaClientError, CommitFailed) as exc:
        raise DlqError(f"dead-letter replay from {bootstrap}: {exc}") from exc
    finally:
        reader.close()
    return summary
