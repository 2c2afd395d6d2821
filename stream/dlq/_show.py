"""``dlq show``: the newest dead letters as a table; reads from the beginning, commits nothing."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime

import pyarrow as pa

from pipelines.config import Settings
from stream import headers
from stream.dlq import _common
from stream.errors import DlqError, KafkaClientError
from stream.types import Envelope, Partition

__all__ = ["format_age", "read_dead_letters", "show_table"]


def format_age(seconds: float) -> str:
    """A short age: ``12s ago``, ``3m ago``, ``5h ago``, ``2d ago``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def show_table(letters: Iterable[Envelope], now: datetime) -> pa.Table:
    """The ``dlq show`` table: one row per dead letter, in the order given."""
    rows = [
        {
            "partition": letter.partition.index,
            "offset": letter.offset,
            "error_type": _common.error_type_of(letter),
            "message": " ".join((letter.header_text(headers.ERROR_MESSAGE) or "").split()),
            "step": letter.header_text(headers.ERROR_STEP) or "-",
            "attempts": letter.header_text("x-attempts") or "-",
            "source": _source(letter),
            "age": format_age((now - _common.failed_at(letter)).total_seconds()),
            "key": _common.text_of(letter.key),
        }
        for letter in letters
    ]
    return pa.Table.from_pylist(rows) if rows else pa.table({"partition": pa.array([], pa.int64())})


def _source(letter: Envelope) -> str:
    topic = letter.header_text("x-source-topic") or "?"
    where = (letter.header_text("x-source-partition"), letter.header_text("x-source-offset"))
    return f"{topic}:{where[0] or '?'}@{where[1] or '?'}"


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
    timeout = timeout or _common.TIMEOUT_S
    kafka = settings.kafka
    bootstrap = _common.broker_address(kafka)
    topic = kafka.dead_letter_topic
    partitions = _common.partition_count(kafka, bootstrap, "dead_letter_topic", timeout)
    reader = _common.open_reader(kafka, bootstrap, f"{kafka.group_id}-dlq-show")
    newest: list[Envelope] = []
    count = 0
    try:
        starts = {
            index: reader.watermarks(Partition(topic, index), timeout)[0]
            for index in range(partitions)
        }
        for batch in _common.read_letters(reader, topic, starts, timeout):
            matching = [
                d for d in batch if not error_types or _common.error_type_of(d) in error_types
            ]
            count += len(matching)
            newest = heapq.nlargest(limit, [*newest, *matching], key=_common.failed_at)
    except KafkaClientError as exc:
        raise DlqError(f"reading {topic} from {bootstrap}: {exc}") from exc
    finally:
        reader.close()
    return sorted(newest, key=_common.failed_at), count
