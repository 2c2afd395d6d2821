"""Dead letters back into service: ``headrace dlq replay`` and ``headrace dlq show``.

``replay`` reads the dead-letter topic and re-publishes each matching dead letter to the input
topic: original key, value and headers, the error headers of SPEC §5 (and ``x-original-bytes``)
removed, ``x-replayed-from: <dlq topic>:<partition>:<offset>`` added, to the request's original
partition when the input topic has it (else by key). Progress is kept in a consumer group of
its own, ``<group_id>-dlq-replay``, or ``<group_id>-dlq-replay-<types sorted, joined by +>``
with ``--error-type``, so a typed and an untyped replay move independently. Offsets are
committed only after the broker acknowledged every replayed record before them; dead letters
the filters skip are committed past too. ``show`` reads from the beginning and commits nothing.

Reading stops at the end offsets seen in the first fetch (the fetch's high watermark: Tansu's
ListOffsets answer is wrong, see docs/tansu.md), or after ``_IDLE_S`` without records.
"""

from __future__ import annotations

import argparse
import heapq
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import confluent_kafka
import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipelines.config import KafkaSettings, Settings, load_settings
from pipelines.errors import ConfigError
from stream.broker import EMBEDDED, EMBEDDED_ADDRESS
from stream.display import render_table
from stream.headers import ERROR_HEADERS
from stream.kafka import consumer_config, producer_config
from stream.topics import TopicError, topic_partitions
from stream.types import Envelope, Headers, Partition

__all__ = [
    "ERROR_TYPES",
    "REPLAYED_FROM",
    "DlqError",
    "ReplayOptions",
    "ReplaySummary",
    "add_commands",
    "failed_at",
    "format_age",
    "parse_since",
    "read_dead_letters",
    "replay",
    "replay_group",
    "replay_headers",
    "show_table",
]

ERROR_TYPES = (
    "decode_error",
    "schema_error",
    "step_error",
    "step_timeout",
    "output_error",
    "too_large",
)
ORIGINAL_BYTES = "x-original-bytes"
REPLAYED_FROM = "x-replayed-from"
_DROPPED = frozenset({*ERROR_HEADERS, ORIGINAL_BYTES, REPLAYED_FROM})
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_TIMEOUT_S = 10.0  # each broker round trip (metadata, offsets, commit)
_FLUSH_S = 60.0  # acknowledgements of one batch of replays (up to 500 records)
_IDLE_S = 2.0  # stop reading when nothing came for this long
_FRAMING_BYTES = 64 * 1024  # as the worker: headers and framing on top of the value
_SKIP_TYPE, _SKIP_SINCE = "not a selected --error-type", "failed before --since"
_SKIP_TOO_LARGE = "too_large, not replayable"
_READ_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)


class DlqError(RuntimeError):
    """Reading, replaying or committing failed; the message says what and where."""


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


def failed_at(letter: Envelope) -> datetime:
    """When the request failed: ``x-failed-at``, else the dead letter's record timestamp."""
    text = letter.header_text("x-failed-at")
    if text:
        try:
            when = datetime.fromisoformat(text)
            return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(letter.timestamp_ms / 1000, tz=UTC)


def replay_headers(letter: Envelope) -> Headers:
    """The request's own headers, in order, then ``x-replayed-from`` naming the dead letter."""
    own = tuple((k, v) for k, v in letter.headers if k.lower() not in _DROPPED)
    where = f"{letter.partition.topic}:{letter.partition.index}:{letter.offset}"
    return (*own, (REPLAYED_FROM, where.encode()))


def replay_group(group_id: str, error_types: Iterable[str]) -> str:
    """The consumer group that keeps a replay's progress: one per set of ``--error-type``."""
    types = sorted(set(error_types))
    return f"{group_id}-dlq-replay" + (f"-{'+'.join(types)}" if types else "")


def format_age(seconds: float) -> str:
    """A short age: ``12s ago``, ``3m ago``, ``5h ago``, ``2d ago``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def _error_type(letter: Envelope) -> str:
    return letter.header_text("x-error-type") or "unknown"


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """What ``dlq replay`` selects (types, since), how many it replays, and whether for real."""

    error_types: frozenset[str] = frozenset()
    since: datetime | None = None
    limit: int | None = None
    dry_run: bool = False

    def skip_reason(self, letter: Envelope) -> str | None:
        """Why ``letter`` is not replayed, or None when it is."""
        error_type = _error_type(letter)
        if self.error_types and error_type not in self.error_types:
            return _SKIP_TYPE
        if self.since is not None and failed_at(letter) < self.since:
            return _SKIP_SINCE
        if error_type == "too_large" or letter.header(ORIGINAL_BYTES) is not None:
            return _SKIP_TOO_LARGE
        return None


def show_table(letters: Iterable[Envelope], now: datetime) -> pa.Table:
    """The ``dlq show`` table: one row per dead letter, in the order given."""
    rows = [
        {
            "partition": letter.partition.index,
            "offset": letter.offset,
            "error_type": _error_type(letter),
            "message": " ".join((letter.header_text("x-error-message") or "").split()),
            "step": letter.header_text("x-error-step") or "-",
            "attempts": letter.header_text("x-attempts") or "-",
            "source": _source(letter),
            "age": format_age((now - failed_at(letter)).total_seconds()),
            "key": _text(letter.key),
        }
        for letter in letters
    ]
    return pa.Table.from_pylist(rows) if rows else pa.table({"partition": pa.array([], pa.int64())})


def _source(letter: Envelope) -> str:
    topic = letter.header_text("x-source-topic") or "?"
    where = (letter.header_text("x-source-partition"), letter.header_text("x-source-offset"))
    return f"{topic}:{where[0] or '?'}@{where[1] or '?'}"


def _text(key: bytes | None) -> str:
    return "-" if key is None else key.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------- reading


def _bootstrap(kafka: KafkaSettings) -> str:
    """The broker address; ``embedded`` is the running embedded broker (never started here:
    a fresh one holds no dead letters)."""
    given = kafka.bootstrap_servers.strip()
    return EMBEDDED_ADDRESS if given.lower() == EMBEDDED else given


def _partitions(kafka: KafkaSettings, bootstrap: str, key: str, timeout: float) -> int:
    """Partitions of the topic at ``kafka.<key>``; a missing topic is an error naming it."""
    topic = getattr(kafka, key)
    try:
        return topic_partitions(
            bootstrap, topic, properties=kafka.librdkafka_properties(), timeout=timeout
        )
    except TopicError:
        raise DlqError(
            f"topic {topic!r} (kafka.{key}) does not exist on {bootstrap}; "
            "check the config, or create it with `headrace topics CONFIG`"
        ) from None


def _consumer(kafka: KafkaSettings, bootstrap: str, group: str) -> confluent_kafka.Consumer:
    overrides: dict[str, str | int | float | bool] = {
        "group.id": group,
        "enable.auto.commit": False,  # commits are ours, after acknowledgements, or none
        "log_level": 3,
    }
    return confluent_kafka.Consumer(consumer_config(kafka, bootstrap, **overrides))


def _start_offsets(
    consumer: confluent_kafka.Consumer,
    topic: str,
    partitions: int,
    since: datetime | None,
    timeout: float,
) -> dict[int, int]:
    """Where to start per partition: the group's committed offset, else the first one; with
    ``since`` no earlier than its offsets_for_times answer (a partition with none is left out).
    """
    tps = [TopicPartition(topic, index) for index in range(partitions)]
    committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout)}
    starts = {
        index: max(committed[index], consumer.get_watermark_offsets(tp, timeout=timeout)[0])
        for index, tp in enumerate(tps)
    }
    if since is not None:
        ms = int(since.timestamp() * 1000)
        hint = [TopicPartition(topic, index, ms) for index in range(partitions)]
        for tp in consumer.offsets_for_times(hint, timeout=timeout):
            if tp.offset < 0:  # no record at or after `since`
                starts.pop(tp.partition)
            else:
                starts[tp.partition] = max(starts[tp.partition], tp.offset)
    return starts


def _read(
    consumer: confluent_kafka.Consumer, topic: str, starts: dict[int, int], timeout: float
) -> Iterator[list[Envelope]]:
    """Batches of dead letters from ``starts`` up to the end offsets of the first fetch; or
    until nothing came for ``_IDLE_S`` (``timeout`` before every partition's first fetch)."""
    consumer.assign([TopicPartition(topic, index, offset) for index, offset in starts.items()])
    ends: dict[int, int] = {}
    position = dict(starts)
    last = time.monotonic()
    while not _reached(consumer, topic, position, ends):
        if time.monotonic() - last > (_IDLE_S if len(ends) == len(position) else timeout):
            return
        batch = [_envelope(message) for message in consumer.consume(500, 0.1) if _ok(message)]
        for letter in batch:
            position[letter.partition.index] = letter.offset + 1
        if batch:
            last = time.monotonic()
            yield batch


def _reached(
    consumer: confluent_kafka.Consumer, topic: str, position: dict[int, int], ends: dict[int, int]
) -> bool:
    for index in position.keys() - ends.keys():
        high = consumer.get_watermark_offsets(TopicPartition(topic, index), cached=True)[1]
        if high >= 0:
            ends[index] = high
    return len(ends) == len(position) and all(position[i] >= ends[i] for i in position)


def _ok(message: confluent_kafka.Message) -> bool:
    error = message.error()
    if error is None:
        return True
    if error.fatal() or error.code() in _READ_ERRORS:
        raise DlqError(f"reading {message.topic()}: {error.str()}")
    return False  # end of partition, transient errors: librdkafka retries by itself


def _envelope(message: confluent_kafka.Message) -> Envelope:
    topic, index, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and index is not None and offset is not None
    raw = message.headers() or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = tuple(
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in pairs
    )
    return Envelope(
        partition=Partition(topic, index),
        offset=offset,
        key=message.key(),
        value=message.value() or b"",
        headers=headers,
        timestamp_ms=message.timestamp()[1],
    )


def _reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


# ---------------------------------------------------------------- replay


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
        consumer: confluent_kafka.Consumer,
        producer: confluent_kafka.Producer | None,
        options: ReplayOptions,
        summary: ReplaySummary,
        *,
        input_partitions: int,
        starts: dict[int, int],
    ) -> None:
        self._consumer, self._producer = consumer, producer
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
        partition = self._target_partition(letter)
        while True:
            try:
                self._producer.produce(
                    self._summary.target,
                    letter.value,
                    key=letter.key,
                    headers=list(replay_headers(letter)),
                    partition=-1 if partition is None else partition,  # -1: by key
                    on_delivery=partial(self._delivered, where),
                )
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                self._errors[where] = _reason(exc)
                return

    def _target_partition(self, letter: Envelope) -> int | None:
        """The request's own partition when it came from this input topic, else by key."""
        index = letter.header_text("x-source-partition") or ""
        if letter.header_text("x-source-topic") != self._summary.target or not index.isdigit():
            return None
        return int(index) if int(index) < self._input_partitions else None

    def _delivered(self, where: tuple[int, int], error: KafkaError | None, message: object) -> None:
        del message
        if error is None:
            self._acked.add(where)
        else:
            self._errors[where] = error.str()

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
            tps = [TopicPartition(topic, index, offset) for index, offset in moved.items()]
            self._consumer.commit(offsets=tps, asynchronous=False)
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
    timeout = timeout or _TIMEOUT_S
    kafka = settings.kafka
    bootstrap = _bootstrap(kafka)
    dlq_partitions = _partitions(kafka, bootstrap, "dead_letter_topic", timeout)
    input_partitions = _partitions(kafka, bootstrap, "input_topic", timeout)
    group = replay_group(kafka.group_id, options.error_types)
    summary = ReplaySummary(kafka.dead_letter_topic, kafka.input_topic, group, options.dry_run)
    consumer = _consumer(kafka, bootstrap, group)
    producer = None
    if not options.dry_run:
        limit = kafka.max_message_bytes + _FRAMING_BYTES
        producer = confluent_kafka.Producer(
            producer_config(kafka, bootstrap, **{"message.max.bytes": limit, "log_level": 3})
        )
    try:
        topic = kafka.dead_letter_topic
        starts = _start_offsets(consumer, topic, dlq_partitions, options.since, timeout)
        replayer = _Replayer(
            consumer, producer, options, summary, input_partitions=input_partitions, starts=starts
        )
        replayer.run(_read(consumer, topic, starts, timeout))
    except KafkaException as exc:
        raise DlqError(f"dead-letter replay from {bootstrap}: {_reason(exc)}") from exc
    finally:
        consumer.close()
    return summary


def read_dead_letters(
    settings: Settings,
    *,
    error_types: frozenset[str] = frozenset(),
    limit: int = 50,
    timeout: float = 0,
) -> tuple[list[Envelope], int]:
    """The newest ``limit`` dead letters (of ``error_types``), newest last, and how many match.

    Reads the whole topic from its first offset, assigned by hand: no group join, no commit.
    """
    timeout = timeout or _TIMEOUT_S
    kafka = settings.kafka
    bootstrap = _bootstrap(kafka)
    topic = kafka.dead_letter_topic
    partitions = _partitions(kafka, bootstrap, "dead_letter_topic", timeout)
    consumer = _consumer(kafka, bootstrap, f"{kafka.group_id}-dlq-show")
    newest: list[Envelope] = []
    count = 0
    try:
        starts = {
            index: consumer.get_watermark_offsets(TopicPartition(topic, index), timeout=timeout)[0]
            for index in range(partitions)
        }
        for batch in _read(consumer, topic, starts, timeout):
            matching = [d for d in batch if not error_types or _error_type(d) in error_types]
            count += len(matching)
            newest = heapq.nlargest(limit, [*newest, *matching], key=failed_at)
    except KafkaException as exc:
        raise DlqError(f"reading {topic} from {bootstrap}: {_reason(exc)}") from exc
    finally:
        consumer.close()
    return sorted(newest, key=failed_at), count


# ---------------------------------------------------------------- command line


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq replay`` and ``dlq show`` on the ``headrace`` parser's subcommands."""
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    actions = dlq.add_subparsers(required=True, metavar="ACTION")
    replay_parser = actions.add_parser(
        "replay", help="re-publish dead letters to the input topic, once per consumer group"
    )
    replay_parser.add_argument("config", type=Path)
    _error_type_option(replay_parser)
    replay_parser.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="WHEN",
        help="only dead letters that failed at or after WHEN: ISO-8601 time, or 30m, 2h, 1d ago",
    )
    replay_parser.add_argument(
        "--limit",
        type=_positive,
        default=None,
        metavar="N",
        help="replay at most N; the next run goes on from there",
    )
    replay_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be replayed; produce and commit nothing",
    )
    replay_parser.set_defaults(command=_replay_command)

    show = actions.add_parser("show", help="list dead letters as a table (commits nothing)")
    show.add_argument("config", type=Path)
    show.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="show the N newest (default 50)"
    )
    _error_type_option(show)
    show.set_defaults(command=_show_command)


def _error_type_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--error-type",
        dest="error_types",
        action="extend",
        nargs="+",
        choices=ERROR_TYPES,
        default=[],
        metavar="T",
        help=f"only these x-error-type values: {', '.join(ERROR_TYPES)}",
    )


def _since(text: str) -> datetime:
    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text) if text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def _replay_command(args: argparse.Namespace) -> int:
    options = ReplayOptions(frozenset(args.error_types), args.since, args.limit, args.dry_run)
    try:
        summary = replay(load_settings(args.config), options)
    except ConfigError as exc:
        return _fail(exc, 2)
    except RuntimeError as exc:  # DlqError, KafkaUnavailable
        return _fail(exc, 1)
    if options.dry_run and summary.replayed:
        table = show_table(summary.replayed, datetime.now(UTC))
        print(render_table(table, max_rows=50))
    print(summary.line())
    if summary.too_large:
        where = ", ".join(
            f"{letter.partition.index}@{letter.offset} ({_text(letter.header(ORIGINAL_BYTES))} "
            "bytes)"
            for letter in summary.too_large[:5]
        )
        more = f" and {len(summary.too_large) - 5} more" if len(summary.too_large) > 5 else ""
        print(
            f"note: {len(summary.too_large)} too_large dead letter(s) not replayable: they keep "
            f"the request's size (x-original-bytes), not its bytes; re-send those requests from "
            f"their source. In {summary.source}: {where}{more}"
        )
    return 0


def _show_command(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
        types = frozenset(args.error_types)
        letters, count = read_dead_letters(settings, error_types=types, limit=args.limit)
    except ConfigError as exc:
        return _fail(exc, 2)
    except RuntimeError as exc:
        return _fail(exc, 1)
    topic = settings.kafka.dead_letter_topic
    if not letters:
        print(
            f"no dead letters in {topic}"
            + (f" of type {', '.join(sorted(types))}" if types else "")
        )
        return 0
    print(render_table(show_table(letters, datetime.now(UTC)), max_rows=len(letters)))
    print(f"{len(letters)} of {count} dead letters in {topic}, newest last")
    return 0


def _fail(exc: Exception, code: int) -> int:
    print(f"headrace: {exc}", file=sys.stderr)
    return code
