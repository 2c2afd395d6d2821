"""The confluent-kafka adapters, on stand-ins that behave as confluent-kafka was measured to:
rebalances inside consume, unreadable header names, full queues, closes that never return."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from pipelines import Pipeline
from pipelines.config import ProcessingSettings
from pipelines.errors import DecodeError
from stream.errors import KafkaClientError
from stream.headers import UNREADABLE_HEADERS
from stream.kafka import clients
from stream.kafka.clients import KafkaConsumer, KafkaProducer, envelope_of
from stream.types import DeadLetter, Headers, Partition
from stream.worker.decoding import Decoder

_SYSTEM_ERROR = (
    "<method 'headers' of 'confluent_kafka.cimpl.Message' objects> returned a result with an "
    "exception set"
)


class _Message:
    """A consumed message; ``bad_name`` makes ``headers()`` fail as confluent-kafka does."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        bad_name: bytes = b"",
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> None:
        self._where = (topic, partition, offset)
        self._bad_name = bad_name
        self._headers = headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b'[{"tensor": [0.5]}]'

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        if self._bad_name:
            try:
                self._bad_name.decode()
            except UnicodeDecodeError as exc:  # what confluent-kafka 2.16 raises
                raise SystemError(_SYSTEM_ERROR) from exc
        if self._headers is not None:
            return self._headers or None  # confluent-kafka gives None for no headers
        return [("content-type", b"application/json")]


class _Consumer:
    """confluent_kafka.Consumer: ``poll`` hands out ``polled``; ``consume`` runs ``during``
    (a rebalance callback, as librdkafka serves them there) and hands out ``batch``."""

    made: ClassVar[list[_Consumer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.polled: deque[_Message] = deque()
        self.batch: list[_Message] = []
        self.during: Callable[[], None] = lambda: None
        self.leave = threading.Event()  # close() returns once set
        self.callbacks: dict[str, Callable[[object, list[TopicPartition]], None]] = {}
        self.changes: list[tuple[str, list[int]]] = []  # assignment calls, by name
        self.starts: list[list[int]] = []  # the offsets each assignment call gave
        self.commits: dict[int, int] | Exception = {}  # the group's, by partition, or the failure
        _Consumer.made.append(self)

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.changes.append(("assign", [tp.partition for tp in partitions]))
        self.starts.append([tp.offset for tp in partitions])

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        del timeout
        if isinstance(self.commits, Exception):
            raise self.commits
        return [
            TopicPartition(tp.topic, tp.partition, self.commits.get(tp.partition, OFFSET_INVALID))
            for tp in partitions
        ]

    def unassign(self) -> None:
        self.changes.append(("unassign", []))

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.changes.append(("incremental_assign", [tp.partition for tp in partitions]))

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.changes.append(("incremental_unassign", [tp.partition for tp in partitions]))

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        del topics
        self.callbacks = callbacks

    def poll(self, timeout: float) -> _Message | None:
        del timeout
        return self.polled.popleft() if self.polled else None

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        del num_messages, timeout
        self.during()
        return self.batch

    def close(self) -> None:
        self.leave.wait()


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> tuple[KafkaConsumer, _Consumer, list[str]]:
    """The adapter on a stand-in, the stand-in, and what ``on_error`` heard."""
    monkeypatch.setattr(clients.confluent_kafka, "Consumer", _Consumer)
    heard: list[str] = []
    adapter = KafkaConsumer({"group.id": "g"}, on_error=heard.append)
    return adapter, _Consumer.made[-1], heard


def test_a_message_of_a_partition_revoked_inside_consume_is_dropped(
    consumer: tuple[KafkaConsumer, _Consumer, list[str]],
) -> None:
    """A message that ``poll`` returned before a rebalance callback of ``consume`` revoked its
    partition is not handed to the worker (its new owner reads it again); the others are."""
    adapter, stand_in, _ = consumer
    revoked: list[list[Partition]] = []
    adapter.subscribe(["in"], on_assign=lambda p: None, on_revoke=revoked.append)
    stand_in.polled.append(_Message("in", 0, 7))
    stand_in.batch = [_Message("in", 1, 3)]
    stand_in.during = lambda: stand_in.callbacks["on_revoke"](None, [TopicPartition("in", 0)])

    envelopes = adapter.consume(100, 0.1)

    assert revoked == [[Partition("in", 0)]]
    assert [(e.partition.index, e.offset) for e in envelopes] == [(1, 3)]


def test_without_a_rebalance_every_message_is_returned(
    consumer: tuple[KafkaConsumer, _Consumer, list[str]],
) -> None:
    """The message ``poll`` waited for comes first, then what ``consume`` had fetched."""
    adapter, stand_in, _ = consumer
    adapter.subscribe(["in"], on_assign=lambda p: None, on_revoke=lambda p: None)
    stand_in.polled.append(_Message("in", 0, 7))
    stand_in.batch = [_Message("in", 0, 8), _Message("in", 1, 3)]
    envelopes = adapter.consume(100, 0.1)
    assert [(e.partition.index, e.offset) for e in envelopes] == [(0, 7), (0, 8), (1, 3)]


@pytest.mark.parametrize(
    ("strategy", "added", "taken"),
    [
        ("range", ("assign", [0, 1]), ("unassign", [])),
        ("cooperative-sticky", ("incremental_assign", [0, 1]), ("incremental_unassign", [1])),
    ],
)
def test_rebalance_callbacks_change_the_assignment_as_the_protocol_requires(
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    added: tuple[str, list[int]],
    taken: tuple[str, list[int]],
) -> None:
    """Once the worker's callback returned (or raised), the eager protocol assigns and
    unassigns the whole assignment, the cooperative one the increment, as librdkafka asks."""
    monkeypatch.setattr(clients.confluent_kafka, "Consumer", _Consumer)
    adapter = KafkaConsumer({"group.id": "g", "partition.assignment.strategy": strategy})
    stand_in = _Consumer.made[-1]
    heard: list[str] = []

    def refuse(partitions: list[Partition]) -> None:
        heard.append(f"revoke {[p.index for p in partitions]}")
        raise RuntimeError("the worker failed while finishing")

    adapter.subscribe(
        ["in"], on_assign=lambda p: heard.append(f"assign {[x.index for x in p]}"), on_revoke=refuse
    )
    stand_in.callbacks["on_assign"](None, [TopicPartition("in", 0), TopicPartition("in", 1)])
    with pytest.raises(RuntimeError):
        stand_in.callbacks["on_revoke"](None, [TopicPartition("in", 1)])
    assert heard == ["assign [0, 1]", "revoke [1]"]
    assert stand_in.changes == [added, taken]


@pytest.mark.parametrize(
    ("config", "commits", "starts"),
    [
        # committed partitions resume where the group left off; the others start where
        # auto.offset.reset says, without librdkafka's 100 ms wait
        ({}, {0: 7}, [7, OFFSET_BEGINNING]),
        ({"auto.offset.reset": "latest"}, {1: 3}, [OFFSET_END, 3]),
        ({"auto.offset.reset": "smallest"}, {}, [OFFSET_BEGINNING, OFFSET_BEGINNING]),
        # left to librdkafka: a lookup that failed, auto.offset.reset=error, read_committed
        ({}, KafkaException(KafkaError(KafkaError._TIMED_OUT)), [OFFSET_INVALID, OFFSET_INVALID]),
        ({}, RuntimeError("Consumer closed"), [OFFSET_INVALID, OFFSET_INVALID]),
        ({"auto.offset.reset": "error"}, {}, [OFFSET_INVALID, OFFSET_INVALID]),
        ({"isolation.level": "read_committed"}, {}, [OFFSET_INVALID, OFFSET_INVALID]),
    ],
)
def test_an_assignment_starts_each_partition_where_the_group_left_off(
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, str],
    commits: dict[int, int] | Exception,
    starts: list[int],
) -> None:
    """The adapter asks for the group's committed offsets as partitions are assigned; the
    partitions are assigned whatever the lookup did."""
    monkeypatch.setattr(clients.confluent_kafka, "Consumer", _Consumer)
    adapter = KafkaConsumer({"group.id": "g", "auto.offset.reset": "earliest", **config})
    stand_in = _Consumer.made[-1]
    stand_in.commits = commits
    adapter.subscribe(["in"], on_assign=lambda p: None, on_revoke=lambda p: None)
    stand_in.callbacks["on_assign"](None, [TopicPartition("in", 0), TopicPartition("in", 1)])
    assert stand_in.starts == [starts]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ([("content-type", b"application/json")], (("content-type", b"application/json"),)),
        ([("a", b"1"), ("empty", None), ("b", b"")], (("a", b"1"), ("empty", b""), ("b", b""))),
        ([], ()),
    ],
    ids=["bytes", "a-null-value", "none"],
)
def test_an_envelope_keeps_every_header_in_order_with_bytes_values(
    given: list[tuple[str, bytes | None]], kept: Headers
) -> None:
    """A header whose value is null (Kafka allows it) is kept, with an empty value."""
    envelope = envelope_of(_Message("in", 0, 5, headers=given))  # type: ignore[arg-type]
    assert envelope.headers == kept
    assert all(type(value) is bytes for _, value in envelope.headers)


def test_a_header_name_that_is_not_utf8_makes_the_request_a_decode_error(
    ccfraud: Pipeline,
) -> None:
    """confluent-kafka cannot read a header name that is not UTF-8; the message still becomes
    an envelope, which the decoder dead-letters with a message naming the header."""
    envelope = envelope_of(_Message("in", 0, 5, bad_name=b"trace\xff\xfe"))  # type: ignore[arg-type]
    assert envelope.offset == 5
    assert envelope.value == b'[{"tensor": [0.5]}]'
    marker = envelope.header(UNREADABLE_HEADERS)
    assert marker is not None
    assert b"header name 'trace<ff><fe>' is not valid UTF-8" in marker

    outcome = Decoder(ccfraud, ProcessingSettings(), 1_000_000)(envelope)

    assert isinstance(outcome, DeadLetter)
    assert isinstance(outcome.error, DecodeError)
    assert "header name 'trace<ff><fe>' is not valid UTF-8" in outcome.error.message


def test_asynchronous_commit_outcomes_reach_the_watcher(
    consumer: tuple[KafkaConsumer, _Consumer, list[str]],
) -> None:
    """librdkafka's ``on_commit`` reports become (offsets stored, error) for the committer."""
    adapter, stand_in, _ = consumer
    heard: list[tuple[dict[Partition, int], str | None]] = []
    adapter.watch_commits(lambda stored, error: heard.append((stored, error)))
    on_commit = stand_in.config["on_commit"]
    on_commit(None, [TopicPartition("in", 0, 12)])
    waiting = KafkaError(KafkaError._WAIT_COORD)
    on_commit(waiting, [TopicPartition("in", 1, 4)])
    assert heard == [({Partition("in", 0): 12}, None), ({}, waiting.str())]


def test_close_gives_up_on_a_broker_that_does_not_answer(
    consumer: tuple[KafkaConsumer, _Consumer, list[str]],
) -> None:
    """A close that librdkafka never finishes (a commit unanswered by a dead broker) returns
    after the timeout and says so, instead of holding up the exit for ever."""
    adapter, stand_in, heard = consumer
    started = time.monotonic()
    adapter.close(timeout=0.2)
    assert time.monotonic() - started < 2
    assert heard and "did not leave its group within 0.2 s" in heard[-1]
    stand_in.leave.set()


class _FullQueue:
    """confluent_kafka.Producer with its local queue full for good (a dead broker)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.polls = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise BufferError("Local: Queue full")

    def poll(self, timeout: float) -> int:
        del timeout
        self.polls += 1
        return 0


def test_a_produce_waiting_on_a_full_queue_gives_up_once_stopping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the worker runs, a full queue is waited on; once it is stopping, ``produce``
    returns and the record is reported undelivered (a transient error) at the next poll."""
    monkeypatch.setattr(clients.confluent_kafka, "Producer", _FullQueue)
    stop = threading.Event()
    producer = KafkaProducer({}, stopping=stop.is_set)
    threading.Timer(0.3, stop.set).start()
    reports: list[str | None] = []
    started = time.monotonic()
    producer.produce("out", b"v", key=None, headers=(), partition=0, on_delivery=reports.append)
    assert 0.25 < time.monotonic() - started < 5
    assert reports == []  # a delivery report never runs inside produce
    producer.poll(0)
    assert len(reports) == 1
    assert reports[0] is not None and reports[0].startswith("_QUEUE_FULL:")


class _Fenced:
    """confluent_kafka.Producer whose transaction commit finds it fenced by a younger one."""

    def __init__(self, config: dict[str, Any]) -> None:
        del config

    def commit_transaction(self, timeout: float) -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "Producer fenced", fatal=True))


def test_a_fenced_producer_names_its_transactional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers in one slot fence each other; the error says which id and how to fix it."""
    monkeypatch.setattr(clients.confluent_kafka, "Producer", _Fenced)
    producer = KafkaProducer({"transactional.id": "headrace-fraud-host-0"})
    with pytest.raises(KafkaClientError, match=r"'headrace-fraud-host-0'.*kafka\.instance_id"):
        producer.commit_transaction({}, object(), 1.0)
