"""The confluent-kafka implementation of :mod:`stream.kafka.protocols`.

The librdkafka configs they are built from come from :mod:`stream.kafka.config`. librdkafka's
errors become :mod:`stream.errors` here: a refused commit :class:`~stream.errors.CommitFailed`,
a transaction that must be aborted :class:`~stream.errors.TransactionAborted` (once aborted),
any other failed call :class:`~stream.errors.KafkaClientError`.

What the adapters guarantee that librdkafka alone does not:

- :meth:`KafkaConsumer.consume` never returns a message of a partition revoked while it ran
  (its new owner reads it again from the committed offset);
- the rebalance callbacks hear of the partitions that move, under either rebalance protocol,
  and the assignment changes as the protocol requires once they return (eager:
  ``assign``/``unassign`` of the whole assignment; cooperative: ``incremental_assign`` /
  ``incremental_unassign`` of the increment);
- a message whose header names are not UTF-8, which confluent-kafka cannot read, still becomes
  an :class:`Envelope`: one carrying :data:`stream.headers.UNREADABLE_HEADERS`, naming the
  header, which the decoder refuses, so that it is dead-lettered (:func:`envelope_of`);
- a partition the group never committed starts at once where ``auto.offset.reset`` says,
  not 100 ms after its assignment (:meth:`KafkaConsumer._start_positions`);
- nothing blocks without bound: :meth:`KafkaProducer.produce` gives up on a full queue once
  the worker is stopping, and :meth:`KafkaConsumer.close` waits at most a few seconds for a
  broker that does not answer.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.errors import CommitFailed, KafkaClientError, TransactionAborted
from stream.headers import UNREADABLE_HEADERS
from stream.kafka.config import (
    RebalanceProtocol,
    rebalance_protocol,
    with_commit_callback,
    with_error_callback,
)
from stream.kafka.protocols import (
    CommitCallback,
    DeliveryCallback,
    ErrorCallback,
    RebalanceCallback,
)
from stream.types import Envelope, Headers, Partition

__all__ = ["BrokerProbe", "KafkaConsumer", "KafkaProducer", "envelope_of", "reason_of"]

_CLOSE_TIMEOUT_S = 10.0
_POSITION_TIMEOUT_S = 5.0  # asking the group's committed offsets at an assignment
# auto.offset.reset values (librdkafka's names and aliases) as the logical offset they start at
_RESET_TO = {
    "earliest": confluent_kafka.OFFSET_BEGINNING,
    "smallest": confluent_kafka.OFFSET_BEGINNING,
    "beginning": confluent_kafka.OFFSET_BEGINNING,
    "latest": confluent_kafka.OFFSET_END,
    "largest": confluent_kafka.OFFSET_END,
    "end": confluent_kafka.OFFSET_END,
}


def _never() -> bool:
    return False


class KafkaConsumer:
    """A confluent-kafka consumer speaking in :class:`Envelope` and :class:`Partition`.

    ``on_error`` hears of the errors no call returns: client-level ones (a broker down) and
    those of single messages, which are skipped (librdkafka retries by itself). A fatal error
    is a KafkaClientError.

    Under the eager protocol (range, roundrobin) a rebalance revokes the whole assignment and
    then assigns the new one; under the cooperative one (``cooperative-sticky``) ``on_revoke``
    and ``on_assign`` get only the partitions that move, and the others keep being read.
    """

    _UNREADABLE: frozenset[int] = frozenset()  # message error codes that stop reading too

    def __init__(self, config: Mapping[str, Any], *, on_error: ErrorCallback | None = None) -> None:
        self.rebalance_protocol: RebalanceProtocol = rebalance_protocol(config)
        self._reset_to = _start_without_commit(config)
        config = with_commit_callback(_with_errors(config, on_error), self._commit_done)
        self._consumer = confluent_kafka.Consumer(config)
        self._report = on_error or _ignore_error
        self._on_assign: RebalanceCallback = _ignore
        self._on_revoke: RebalanceCallback = _ignore
        self._on_commit: CommitCallback = _ignore_commit
        self._revoked_now: set[tuple[str, int]] = set()  # during the consume() call running

    def subscribe(
        self, topics: Sequence[str], on_assign: RebalanceCallback, on_revoke: RebalanceCallback
    ) -> None:
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._consumer.subscribe(
            list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def consume(self, max_messages: int, timeout: float) -> list[Envelope]:
        # A batch consume waits its whole timeout unless max_messages arrive: wait for the
        # first message only, then take what is already fetched without waiting.
        first = self._consumer.poll(timeout)
        if first is None:
            return []
        if max_messages == 1:
            return self._envelopes([first])
        self._revoked_now = set()
        rest = self._consumer.consume(num_messages=max_messages - 1, timeout=0)
        if (first.topic(), first.partition()) in self._revoked_now:
            # Its partition was revoked by a rebalance callback of consume(), after poll()
            # returned it: its new owner reads it again from the committed offset. (librdkafka
            # itself drops the messages of a revoked partition fetched within one call.)
            return self._envelopes(rest)
        return self._envelopes([first, *rest])

    def _envelopes(self, messages: list[confluent_kafka.Message]) -> list[Envelope]:
        envelopes = []
        for message in messages:
            error = message.error()
            if error is None:
                envelopes.append(envelope_of(message))
            elif error.code() != KafkaError._PARTITION_EOF:
                if error.fatal() or error.code() in self._UNREADABLE:
                    raise KafkaClientError(f"reading {message.topic()}: {error.str()}")
                self._report(error.str())  # transient: librdkafka retries by itself
        return envelopes

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        if not offsets:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=_topic_partitions(offsets), asynchronous=True)
            else:
                self._consumer.commit(offsets=_topic_partitions(offsets), asynchronous=False)
        except KafkaException as exc:
            raise CommitFailed(reason_of(exc)) from exc

    def watch_commits(self, callback: CommitCallback) -> None:
        self._on_commit = callback

    def pause(self, partitions: Sequence[Partition]) -> None:
        if partitions:
            self._consumer.pause(_topic_partitions({p: -1 for p in partitions}))

    def resume(self, partitions: Sequence[Partition]) -> None:
        if not partitions:
            return
        resumed = _topic_partitions({p: -1 for p in partitions})
        self._consumer.resume(resumed)
        # librdkafka's fetcher notices a resume only at its next wake-up, up to a second later
        # (measured: 950 ms from resume() to the next record; 10 ms after a seek): seeking to
        # the position it resumes from wakes it at once and moves nothing. A partition with no
        # position yet (nothing consumed) starts from its committed offset as before.
        for position in self._consumer.position(resumed):
            if position.offset < 0 or position.error is not None:
                continue
            with contextlib.suppress(KafkaException):  # revoked meanwhile: nothing to wake
                self._consumer.seek(position)

    def assignment(self) -> list[Partition]:
        return [Partition(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def lag(self) -> dict[Partition, int]:
        assigned = self._consumer.assignment()
        found = {}
        for position in self._consumer.position(assigned):
            # cached: the fetch's high watermark (Tansu's ListOffsets answer is wrong)
            _, high = self._consumer.get_watermark_offsets(position, cached=True)
            if high >= 0 and position.offset >= 0:
                found[Partition(position.topic, position.partition)] = max(
                    0, high - position.offset
                )
        return found

    def reachable(self, timeout: float) -> str | None:
        try:
            self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            return str(exc.args[0].str() if exc.args else exc)
        return None

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def committed(self, partitions: Sequence[Partition], timeout: float) -> dict[Partition, int]:
        """The group's committed offsets (negative where it committed none)."""
        try:
            found = self._consumer.committed(
                _topic_partitions({p: -1 for p in partitions}), timeout=timeout
            )
        except KafkaException as exc:
            raise KafkaClientError(reason_of(exc)) from exc
        return {Partition(tp.topic, tp.partition): tp.offset for tp in found}

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(TopicPartition(partition.topic, partition.index, offset))

    def close(self, timeout: float = _CLOSE_TIMEOUT_S) -> None:
        """Leave the group (``on_revoke`` runs here), waiting at most ``timeout`` seconds.

        librdkafka's close can wait for ever for the answer to a commit sent just before the
        broker went away; then the consumer is left behind, unclosed, and ``on_error`` hears
        of it. An exception of ``on_revoke`` is raised here.
        """
        failed: list[BaseException] = []
        closing = threading.Thread(
            target=self._close, args=(failed,), name="headrace-consumer-close", daemon=True
        )
        closing.start()
        closing.join(timeout)
        if closing.is_alive():
            self._report(
                f"the consumer did not leave its group within {timeout:g} s (is the broker "
                "reachable?); leaving it behind"
            )
        elif failed:
            raise failed[0]

    def _close(self, failed: list[BaseException]) -> None:
        try:
            self._consumer.close()
        except BaseException as exc:  # raised in the caller's thread by close()
            failed.append(exc)

    def _assigned(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """confluent-kafka's ``on_assign``: ``partitions`` are the new assignment (eager) or
        what is added to it (cooperative); they are read from once this returns."""
        del consumer
        try:
            self._on_assign([Partition(tp.topic, tp.partition) for tp in partitions])
        finally:  # librdkafka waits for this, whatever the callback did
            partitions = self._start_positions(partitions)
            if self.rebalance_protocol == "COOPERATIVE":
                self._consumer.incremental_assign(partitions)
            else:
                self._consumer.assign(partitions)

    def _start_positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where each assigned partition starts: the group's committed offset, or, where it
        committed none, the logical offset ``auto.offset.reset`` names.

        librdkafka looks both up by itself after the assignment, but resolves a partition
        without a committed offset only after a fixed 100 ms wait (its offset reset backs off
        whenever the lookup found no offset): each first start of a group, and each partition
        it never committed, began 100 ms late. Asking for the committed offsets here takes the
        one round trip librdkafka's own lookup would (inside the callback, so the partitions
        kept through a cooperative rebalance wait for it too). Should it fail, or under
        ``read_committed`` (whose lookup waits for pending transactional commits), the
        partitions are assigned as they came and librdkafka looks them up as before.
        """
        if self._reset_to is None or not partitions:
            return partitions
        try:
            found = self._consumer.committed(partitions, timeout=_POSITION_TIMEOUT_S)
        except Exception:  # whatever failed, the partitions must still be assigned
            return partitions
        committed = {(tp.topic, tp.partition): tp for tp in found}
        positioned = []
        for asked in partitions:
            position = committed.get((asked.topic, asked.partition))
            if position is None or position.error is not None:
                positioned.append(asked)
            elif position.offset >= 0:
                positioned.append(position)
            else:
                positioned.append(TopicPartition(asked.topic, asked.partition, self._reset_to))
        return positioned

    def _revoked(self, consumer: object, partitions: list[TopicPartition]) -> None:
        """confluent-kafka's ``on_revoke`` and ``on_lost``: ``partitions`` are the whole
        assignment (eager) or what is taken from it (cooperative); while the callback runs
        they are still assigned, so it can commit them."""
        del consumer
        self._revoked_now.update((tp.topic, tp.partition) for tp in partitions)
        try:
            self._on_revoke([Partition(tp.topic, tp.partition) for tp in partitions])
        finally:
            if self.rebalance_protocol == "COOPERATIVE":
                self._consumer.incremental_unassign(partitions)
            else:
                self._consumer.unassign()

    def _commit_done(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """confluent-kafka's ``on_commit``: how an asynchronous commit ended."""
        failure = error or next((tp.error for tp in partitions if tp.error is not None), None)
        stored = (
            {}
            if error is not None
            else {
                Partition(tp.topic, tp.partition): tp.offset
                for tp in partitions
                if tp.error is None
            }
        )
        self._on_commit(stored, None if failure is None else failure.str())


class KafkaProducer:
    """A confluent-kafka producer; blocks politely when its local queue is full.

    ``on_error`` hears of client-level errors (a broker down). Once ``stopping()`` is true, a
    record that finds the queue full is not produced: its delivery fails at once with
    ``_QUEUE_FULL`` (transient; a stopping worker leaves it uncommitted). With a
    ``transactional.id`` in its config it offers the transaction calls of exactly-once mode.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        on_error: ErrorCallback | None = None,
        stopping: Callable[[], bool] = _never,
    ) -> None:
        self._producer = confluent_kafka.Producer(_with_errors(config, on_error))
        self._partitions: dict[str, int] = {}
        self._stopping = stopping
        self._transactional_id = config.get("transactional.id")
        # records refused before they left the process, reported at the next poll/flush as
        # the protocol promises (a callback never runs inside produce)
        self._refused: list[tuple[DeliveryCallback, str]] = []

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
        delivered = functools.partial(_report, on_delivery)
        target = _ANY_PARTITION if partition is None else partition
        while True:
            try:
                self._producer.produce(
                    topic, value, key, target, on_delivery=delivered, headers=list(headers)
                )
                return
            except BufferError:
                if self._stopping():  # a dead broker must not hold up SIGTERM
                    self._refuse(
                        on_delivery, "_QUEUE_FULL: Local: Queue full; not produced: stopping"
                    )
                    return
                self._producer.poll(0.05)  # local queue full: let deliveries drain
            except KafkaException as exc:
                # refused before it left the process (e.g. MSG_SIZE_TOO_LARGE): same path
                # as a refusal by the broker
                error = exc.args[0]
                self._refuse(on_delivery, f"{error.name()}: {error.str()}")
                return

    def poll(self, timeout: float) -> None:
        self._report_refused()
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            raise KafkaClientError(reason_of(exc)) from exc

    def flush(self, timeout: float) -> int:
        self._report_refused()
        remaining = int(self._producer.flush(timeout))
        self._report_refused()  # refused by produce calls of the callbacks flush ran
        return remaining

    def _refuse(self, on_delivery: DeliveryCallback, error: str) -> None:
        self._refused.append((on_delivery, error))

    def _report_refused(self) -> None:
        while self._refused:
            on_delivery, error = self._refused.pop(0)
            on_delivery(error)

    def partitions_for(self, topic: str) -> int:
        if topic not in self._partitions:
            # all topics: asking for one by name makes some brokers create it
            metadata = self._producer.list_topics(timeout=10)
            found = metadata.topics.get(topic)
            count = len(found.partitions) if found is not None and found.error is None else 0
            if count == 0:
                return 0
            self._partitions[topic] = count
        return self._partitions[topic]

    def init_transactions(self, timeout: float) -> None:
        """Register the transactional id, fencing off an older producer that used it."""
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise KafkaClientError(f"initialising transactions: {reason_of(exc)}") from exc

    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise KafkaClientError(f"beginning a transaction: {reason_of(exc)}") from exc

    def commit_transaction(
        self, offsets: Mapping[Partition, int], group: object, timeout: float
    ) -> None:
        """Commit the open transaction with the consumer ``group``'s ``offsets`` in it.

        ``group`` is the consumer's :meth:`KafkaConsumer.group_metadata`. TransactionAborted
        when librdkafka says the transaction must be aborted (it is then); KafkaClientError
        for any other failure (a timeout, a fatal error such as being fenced).
        """
        try:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    _topic_partitions(offsets), group, timeout
                )
            self._producer.commit_transaction(timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if not error.txn_requires_abort():
                raise KafkaClientError(f"committing a transaction: {self._why(error)}") from exc
            try:
                self._producer.abort_transaction(timeout)
            except KafkaException as abort:
                raise KafkaClientError(
                    f"aborting a transaction ({self._why(error)}): {reason_of(abort)}"
                ) from abort
            raise TransactionAborted(self._why(error)) from exc

    def _why(self, error: KafkaError) -> str:
        if error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            return (
                f"{error.str()}: another producer took over transactional.id "
                f"'{self._transactional_id}' (do two workers share it? give each its own "
                "kafka.instance_id or HEADRACE_REPLICA_INDEX)"
            )
        return str(error.str())


class BrokerProbe:
    """Asks the broker for one topic's metadata, on a connection of its own: ``probe(timeout)``
    is None when the broker answered within ``timeout`` seconds, else why not.

    For :class:`stream.ops.health.BrokerWatch`, on its thread. Not the worker's consumer: with
    confluent-kafka 2.x the calls on one consumer take turns, and a probe from a second thread
    waited behind the loop's polls for as long as they went on (24 s in a 25-s measurement),
    while one on its own client times out when it should. Its config
    (:func:`stream.kafka.config.probe_config`) never lets it create the topic.
    """

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self._admin = AdminClient(dict(config))
        self._topic = topic

    def __call__(self, timeout: float) -> str | None:
        try:
            self._admin.list_topics(self._topic, timeout=timeout)
        except KafkaException as exc:
            return reason_of(exc)
        return None


def envelope_of(message: confluent_kafka.Message) -> Envelope:
    """A consumed message as an :class:`Envelope` (the message had no error).

    confluent-kafka cannot read headers whose name is not UTF-8 (``headers()`` raises
    SystemError from a UnicodeDecodeError); such a message gets headers of its own instead:
    :data:`stream.headers.UNREADABLE_HEADERS`, naming the header, which the decoder refuses,
    so that the request is dead-lettered as a ``decode_error``.
    """
    topic, index, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and index is not None and offset is not None
    return Envelope(  # positional: one is made per message
        _partition(topic, index),
        offset,
        message.key(),
        message.value() or b"",
        _headers(message),
        message.timestamp()[1],
    )


def _headers(message: confluent_kafka.Message) -> Headers:
    try:
        raw = message.headers()
    except (SystemError, UnicodeDecodeError) as exc:
        return _unreadable(exc)
    if not raw:
        return ()
    if isinstance(raw, list):
        for _, value in raw:
            if type(value) is not bytes:
                break
        else:
            return cast(Headers, tuple(raw))  # the usual case: (name, bytes) pairs already
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple(
        (name, value.encode() if isinstance(value, str) else (value or b""))
        for name, value in pairs
    )


def _unreadable(exc: Exception) -> Headers:
    cause = exc if isinstance(exc, UnicodeDecodeError) else exc.__cause__ or exc.__context__
    if isinstance(cause, UnicodeDecodeError):
        what = f"header name '{_printable(bytes(cause.object))}' is not valid UTF-8"
    else:
        what = f"{type(exc).__name__}: {exc}"
    text = f"unreadable headers ({what}); the request's headers are lost".encode()
    return ((UNREADABLE_HEADERS, text),)


def _printable(raw: bytes) -> str:
    """``raw`` as text: its UTF-8 as it is, every other byte as ``<ff>``."""
    text = raw.decode("utf-8", "surrogateescape")
    return "".join(f"<{ord(c) - 0xDC00:02x}>" if "\udc80" <= c <= "\udcff" else c for c in text)


@functools.lru_cache(maxsize=4096)
def _partition(topic: str, index: int) -> Partition:
    return Partition(topic, index)


def reason_of(exc: KafkaException) -> str:
    """The librdkafka reason inside ``exc``."""
    error = exc.args[0] if exc.args else exc
    return error.str() if isinstance(error, KafkaError) else str(error)


def _start_without_commit(config: Mapping[str, Any]) -> int | None:
    """The logical offset a partition with no committed offset starts at; None where that is
    left to librdkafka (``auto.offset.reset: error``, or ``read_committed``)."""
    if str(config.get("isolation.level", "")).strip().lower() == "read_committed":
        return None
    return _RESET_TO.get(str(config.get("auto.offset.reset", "latest")).strip().lower())


def _ignore(partitions: list[Partition]) -> None:
    del partitions


def _ignore_error(text: str) -> None:
    del text


def _ignore_commit(offsets: dict[Partition, int], error: str | None) -> None:
    del offsets, error


class _ErrorText:
    """confluent-kafka's error callback: hands on each error's text."""

    def __init__(self, on_error: ErrorCallback) -> None:
        self._on_error = on_error

    def __call__(self, error: KafkaError) -> None:
        if error.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the error before it
            self._on_error(error.str())


def _with_errors(config: Mapping[str, Any], on_error: ErrorCallback | None) -> dict[str, Any]:
    return dict(config) if on_error is None else with_error_callback(config, _ErrorText(on_error))


_ANY_PARTITION = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner picks (by key)


def _report(on_delivery: DeliveryCallback, error: KafkaError | None, message: object) -> None:
    del message
    on_delivery(None if error is None else f"{error.name()}: {error.str()}")


def _topic_partitions(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(p.topic, p.index, offset) for p, offset in offsets.items()]
