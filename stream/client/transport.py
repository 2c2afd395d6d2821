"""How a client reaches the workers: the ``Transport`` protocol and its Kafka implementation.

:class:`KafkaTransport` holds one producer and one reader. The reader never joins the workers'
group: it is assigned every partition of the output and dead-letter topics at their end
offsets, read before anything is sent (so no reply can be missed), and commits nothing. A
background thread polls it and completes the future of each reply's request id; replies to
other requests (other clients', or ones given up on) are skipped.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, InvalidStateError
from typing import Protocol

from pipelines.config import Settings
from stream import headers
from stream.client import wire
from stream.errors import (
    DELIVERY_ERROR,
    InferenceFailed,
    KafkaClientError,
    KafkaUnavailable,
    TopicError,
)
from stream.kafka.admin import create_topics
from stream.kafka.clients import KafkaProducer
from stream.kafka.config import reply_consumer_config, request_producer_config
from stream.kafka.readers import PartitionReader
from stream.types import Envelope, Partition

__all__ = ["KafkaTransport", "Transport"]

_POLL_S = 0.05  # how long the reply thread blocks in one poll; also its reaction time to close()
_DRAIN = 1000  # replies taken at once after the first one of a poll
_REPLY_HEADERS = frozenset(
    {
        headers.REQUEST_ID,
        headers.CONTENT_TYPE,
        headers.ERROR_TYPE,
        headers.ERROR_MESSAGE,
        headers.ERROR_STEP,
    }
)


class Transport(Protocol):
    """How a client reaches the workers: send a request, get a future of its reply."""

    def send(self, request: wire.Request, request_id: str) -> Future[wire.Reply]:
        """Send; the future gets the reply, or InferenceFailed for a dead letter."""
        ...

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id``: a late reply is skipped."""
        ...

    def silence(self) -> str:
        """Why nothing may have come back: where the client listened, the last broker error."""
        ...

    def close(self) -> None: ...


class KafkaTransport:
    """The producer, the reply consumer and the thread that matches replies to requests."""

    def __init__(
        self, settings: Settings, bootstrap: str, *, timeout: float, own_broker: bool = False
    ) -> None:
        kafka = settings.kafka
        self._bootstrap = bootstrap
        self._input = kafka.input_topic
        self._output = kafka.output_topic
        self._dead_letters = kafka.dead_letter_topic
        self._own_broker = own_broker
        self._last_error = ""
        self._pending: dict[str, Future[wire.Reply]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._consumer = PartitionReader(
            reply_consumer_config(kafka, bootstrap), on_error=self._on_error
        )
        try:
            self._assign_at_end(settings, timeout)
            self._producer = KafkaProducer(
                request_producer_config(kafka, bootstrap), on_error=self._on_error
            )
        except BaseException:
            self._consumer.close()
            raise
        self._thread = threading.Thread(target=self._listen, name="headrace-client", daemon=True)
        self._thread.start()

    def send(self, request: wire.Request, request_id: str) -> Future[wire.Reply]:
        future: Future[wire.Reply] = Future()
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("this client is closed; connect again")
            self._pending[request_id] = future

        def delivered(error: str | None) -> None:
            if error is not None:
                kind = "too_large" if error.startswith("MSG_SIZE_TOO_LARGE") else DELIVERY_ERROR
                message = f"not delivered to {self._input} at {self._bootstrap}: {error}"
                self._settle(request_id, InferenceFailed(kind, message, request_id))

        self._producer.produce(
            self._input,
            request.payload,
            key=None,
            headers=request.headers_for(request_id),
            partition=None,
            on_delivery=delivered,
        )
        return future

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def silence(self) -> str:
        where = f"nothing on {self._output} or {self._dead_letters} at {self._bootstrap}"
        hint = f"is a worker serving {self._input}? (headrace run CONFIG)"
        if self._own_broker:
            hint += "; this client started that embedded broker itself"
        last = f"; last Kafka error: {self._last_error}" if self._last_error else ""
        return f"{where}; {hint}{last}"

    def close(self) -> None:
        with self._lock:
            self._stopping.set()
            pending, self._pending = self._pending, {}
        self._thread.join()
        for future in pending.values():
            _complete(future, RuntimeError("the client was closed before the reply came"))
        self._producer.flush(5.0)
        self._consumer.close()

    def _on_error(self, error: str) -> None:
        self._last_error = error

    def _assign_at_end(self, settings: Settings, timeout: float) -> None:
        """Assign all reply partitions at their current end, creating missing topics first."""
        names = (self._input, self._output, self._dead_letters)
        try:
            topics = self._consumer.topics(timeout)
            if not all(name in topics for name in names):
                create_topics(settings, self._bootstrap)
                topics = self._consumer.topics(timeout)
            assignment = {}
            for name in (self._output, self._dead_letters):
                if not topics.get(name):
                    raise TopicError(f"topic {name!r} is not available on {self._bootstrap}")
                for index in range(topics[name]):
                    # Tansu answers the start of the last record batch + 1, at or before the
                    # end: a few old replies may be read again, and are skipped by id
                    partition = Partition(name, index)
                    assignment[partition] = self._consumer.watermarks(partition, timeout)[1]
        except KafkaClientError as exc:
            reason = self._last_error or str(exc)
            raise KafkaUnavailable(self._bootstrap, timeout, reason) from exc
        self._consumer.assign(assignment)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                replies = self._consumer.consume(_DRAIN + 1, _POLL_S)
                self._producer.poll(0)
            except KafkaClientError as exc:  # a fatal client error: say so on timeouts, go on
                self._last_error = str(exc)
                self._stopping.wait(_POLL_S)
                continue
            for reply in replies:
                try:
                    self._receive(reply)
                except Exception as exc:  # one unreadable reply must not stop the listener
                    self._last_error = f"unreadable reply: {type(exc).__name__}: {exc}"

    def _receive(self, reply: Envelope) -> None:
        found: dict[str, str] = {}
        for key, value in reply.headers:
            if key.lower() in _REPLY_HEADERS:
                found[key.lower()] = value.decode("utf-8", "replace")
        request_id = found.get(headers.REQUEST_ID)
        if request_id is None:
            return
        if reply.partition.topic == self._dead_letters:
            outcome: wire.Reply | Exception = InferenceFailed(
                found.get(headers.ERROR_TYPE, "unknown"),
                found.get(headers.ERROR_MESSAGE, ""),
                request_id,
                step=found.get(headers.ERROR_STEP) or None,
            )
        else:
            outcome = wire.Reply(reply.value, found.get(headers.CONTENT_TYPE))
        self._settle(request_id, outcome)

    def _settle(self, request_id: str, outcome: wire.Reply | Exception) -> None:
        with self._lock:
            future = self._pending.pop(request_id, None)
        if future is not None:
            _complete(future, outcome)


def _complete(future: Future[wire.Reply], outcome: wire.Reply | BaseException) -> None:
    """Settle a future unless it was cancelled meanwhile (a caller gave up on it)."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except InvalidStateError:
        pass
