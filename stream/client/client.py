"""The client SDK: ``stream.connect(config)`` gives a :class:`Client` whose calls send requests to
the input topic and wait for their results (or dead letters) by ``x-request-id``.

    with stream.connect("configs/ccfraud.yaml") as client:
        result = client.infer(dataframe)                    # a DataFrame back
        results = await client.parallel_infer(frames)       # many at once, in input order

A client holds one producer and one consumer. The consumer never joins the workers' group: it
is assigned every partition of the output and dead-letter topics at their end offsets, read
before anything is sent (so no reply can be missed), and commits nothing. A background thread
polls it and completes the future of each reply's request id; replies to other requests (other
clients', or ones given up on) are skipped. Any number of threads and asyncio tasks may share
one client.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipelines.config import Settings, load_settings
from stream import headers
from stream.client import files, wire
from stream.errors import (
    DELIVERY_ERROR,
    InferenceFailed,
    InferenceTimeout,
    KafkaUnavailable,
    TopicError,
)
from stream.kafka.admin import create_topics
from stream.kafka.broker import connect_kafka
from stream.kafka.clients import KafkaProducer
from stream.kafka.config import reply_consumer_config, request_producer_config

__all__ = ["Client", "KafkaTransport", "Pending", "Transport", "connect"]

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


@dataclass(frozen=True, slots=True)
class Pending:
    """A request on its way: its id, when it left, and the future of its reply."""

    request: wire.Request
    request_id: str
    future: Future[wire.Reply]
    sent_at: float

    def result(self) -> Any:
        """The decoded result of a completed request (InferenceFailed for a dead letter)."""
        return wire.decode_reply(self.future.result(0), self.request, self.request_id)


class Client:
    """Inference over Kafka with the calls of SPEC §7; made by :func:`connect`."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        *,
        on_close: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.custom = wire.is_custom(settings)
        self._transport = transport
        self._on_close = on_close
        self.clock = clock
        self._closed = False

    def infer(
        self,
        data: Any,
        timeout: float = 15.0,
        *,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        parameters: Mapping[str, object] | None = None,
    ) -> Any:
        """Serve ``data`` (DataFrame, Table, or JSON) and return the result in the same type.

        Raises InferenceFailed as soon as the request is dead-lettered, and InferenceTimeout
        when neither a result nor a dead letter came within ``timeout`` seconds.
        """
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        return self._wait(self.send(wire.build_request(data, options, custom=self.custom)), timeout)

    def infer_from_file(
        self,
        path: str | os.PathLike[str],
        data_format: str | None = None,
        timeout: float = 15.0,
        *,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        parameters: Mapping[str, object] | None = None,
    ) -> Any:
        """Serve the request in a file: ``.arrow`` (Arrow IPC file or stream) gives a Table,
        ``.json`` / ``.df.json`` (pandas-records) JSON rows; ``data_format="custom-json"``
        sends any JSON file as custom JSON. Other files are a ValueError naming the kinds."""
        data, fmt = files.read_request_file(path, data_format)
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        request = wire.build_request(data, options, custom=self.custom, fmt=fmt)
        return self._wait(self.send(request), timeout)

    async def parallel_infer(
        self,
        items: Sequence[Any],
        timeout: float = 15.0,
        num_parallel: int | None = None,
        retries: int = 1,
        *,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        parameters: Mapping[str, object] | None = None,
    ) -> list[Any]:
        """Serve DataFrames (or Tables), at most ``num_parallel`` at a time; results in input
        order. A failed item is its InferenceFailed or InferenceTimeout, at its index; a timed
        out item is sent again up to ``retries`` times, a dead-lettered one is not."""
        wire.uniform_kind(items)
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        parallel = num_parallel if num_parallel is not None else 2 * (os.cpu_count() or 1)
        if not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"num_parallel must be a positive integer, not {num_parallel!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
        requests = [wire.build_request(item, options, custom=self.custom) for item in items]
        slots = asyncio.Semaphore(parallel)

        async def one(request: wire.Request) -> Any:
            async with slots:
                return await self._attempts(request, timeout, retries)

        return list(await asyncio.gather(*(one(request) for request in requests)))

    def send(self, request: wire.Request) -> Pending:
        """Send an encoded request under a fresh request id (the building block of the calls)."""
        if self._closed:
            raise RuntimeError("this client is closed; connect again")
        request_id = str(uuid.uuid4())
        limit = self.settings.kafka.max_message_bytes
        if len(request.payload) > limit:
            raise InferenceFailed(
                "too_large",
                f"the request is {len(request.payload)} bytes, over kafka.max_message_bytes "
                f"({limit}); send fewer rows per request, e.g. BatchInferenceClient.run",
                request_id,
            )
        future = self._transport.send(request, request_id)
        return Pending(request, request_id, future, self.clock())

    def abandon(self, pending: Pending, timeout: float) -> InferenceTimeout:
        """Give up on a request after ``timeout`` s: a late reply is skipped; the error to raise."""
        self._transport.forget(pending.request_id)
        pending.future.cancel()
        return InferenceTimeout(pending.request_id, timeout, self._transport.silence())

    def close(self) -> None:
        """Stop listening, flush the producer, stop a broker this client started. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.close()
        finally:
            if self._on_close is not None:
                self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kafka = self.settings.kafka
        state = "closed" if self._closed else "open"
        return f"<Client {self.settings.pipeline.name} {kafka.input_topic} ({state})>"

    def _wait(self, pending: Pending, timeout: float) -> Any:
        try:
            pending.future.result(timeout)
        except TimeoutError:
            raise self.abandon(pending, timeout) from None
        return pending.result()

    async def _attempts(self, request: wire.Request, timeout: float, retries: int) -> Any:
        error: InferenceTimeout | None = None
        for _ in range(retries + 1):
            try:
                pending = self.send(request)
            except InferenceFailed as exc:
                return exc
            try:
                await asyncio.wait_for(asyncio.wrap_future(pending.future), timeout)
                return pending.result()
            except TimeoutError:
                error = self.abandon(pending, timeout)
            except InferenceFailed as exc:
                return exc
        return error


def connect(config: str | os.PathLike[str] | Settings, *, connect_timeout: float = 10.0) -> Client:
    """A client for the deployment in ``config`` (a YAML path or loaded settings).

    ``kafka.bootstrap_servers: embedded`` uses the broker on 127.0.0.1:19092, starting one if
    none answers (it stops when the client closes). Missing topics are created as the worker
    would. An unreachable broker raises KafkaUnavailable naming its address.
    """
    settings = config if isinstance(config, Settings) else load_settings(config)
    stack = ExitStack()
    try:
        connection = stack.enter_context(connect_kafka(settings))
        transport = KafkaTransport(
            settings,
            connection.bootstrap,
            timeout=connect_timeout,
            own_broker=connection.broker is not None,
        )
    except BaseException:
        stack.close()
        raise
    return Client(settings, transport, on_close=stack.close)


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
        self._consumer = confluent_kafka.Consumer(
            {**reply_consumer_config(kafka, bootstrap), "error_cb": self._on_error}
        )
        try:
            self._assign_at_end(settings, timeout)
            self._producer = KafkaProducer(
                {**request_producer_config(kafka, bootstrap), "error_cb": self._on_error}
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

    def _on_error(self, error: KafkaError) -> None:
        if error.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the error before it
            self._last_error = error.str()

    def _assign_at_end(self, settings: Settings, timeout: float) -> None:
        """Assign all reply partitions at their current end, creating missing topics first."""
        names = (self._input, self._output, self._dead_letters)
        try:
            topics = self._consumer.list_topics(timeout=timeout).topics
            if not all(name in topics for name in names):
                create_topics(settings, self._bootstrap)
                topics = self._consumer.list_topics(timeout=timeout).topics
            assignment = []
            for name in (self._output, self._dead_letters):
                found = topics.get(name)
                if found is None or found.error is not None or not found.partitions:
                    raise TopicError(f"topic {name!r} is not available on {self._bootstrap}")
                for index in sorted(found.partitions):
                    # Tansu answers the start of the last record batch + 1, at or before the
                    # end: a few old replies may be read again, and are skipped by id
                    end = self._consumer.get_watermark_offsets(
                        TopicPartition(name, index), timeout=timeout
                    )[1]
                    assignment.append(TopicPartition(name, index, end))
        except KafkaException as exc:
            reason = self._last_error or str(exc.args[0] if exc.args else exc)
            raise KafkaUnavailable(self._bootstrap, timeout, reason) from exc
        self._consumer.assign(assignment)

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._consumer.poll(_POLL_S)
                messages = [] if first is None else [first, *self._consumer.consume(_DRAIN, 0)]
                self._producer.poll(0)
            except KafkaException as exc:  # a fatal client error: say so on timeouts, go on
                self._last_error = str(exc)
                self._stopping.wait(_POLL_S)
                continue
            for message in messages:
                try:
                    self._receive(message)
                except Exception as exc:  # one unreadable reply must not stop the listener
                    self._last_error = f"unreadable reply: {type(exc).__name__}: {exc}"

    def _receive(self, message: confluent_kafka.Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._last_error = error.str()
            return
        found: dict[str, str] = {}
        raw = message.headers() or ()
        for key, value in raw.items() if isinstance(raw, dict) else raw:
            if key.lower() in _REPLY_HEADERS:
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                found[key.lower()] = text or ""
        request_id = found.get(headers.REQUEST_ID)
        if request_id is None:
            return
        if message.topic() == self._dead_letters:
            outcome: wire.Reply | Exception = InferenceFailed(
                found.get(headers.ERROR_TYPE, "unknown"),
                found.get(headers.ERROR_MESSAGE, ""),
                request_id,
                step=found.get(headers.ERROR_STEP) or None,
            )
        else:
            outcome = wire.Reply(message.value() or b"", found.get(headers.CONTENT_TYPE))
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


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
