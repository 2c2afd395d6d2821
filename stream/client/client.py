"""The client SDK: ``stream.connect(config)`` gives a :class:`Client` whose calls send requests to
the input topic and wait for their results (or dead letters) by ``x-request-id``.

    with stream.connect("configs/ccfraud.yaml") as client:
        result = client.infer(dataframe)                    # a DataFrame back
        results = await client.parallel_infer(frames)       # many at once, in input order

A client sends through a :class:`~stream.client.transport.Transport`, Kafka's by default (see
:mod:`stream.client.transport`). Any number of threads and asyncio tasks may share one client.

Every request a call sends carries ``x-deadline``: the wall-clock time (epoch ms) at which the
call stops waiting for it, so a worker that consumes it later dead-letters it as ``expired``
instead of serving an answer nobody reads. A request that already has ``x-deadline`` keeps it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from pipelines.config import Settings
from stream import headers
from stream.client import files, wire
from stream.client.deployments import Deployment, resolve_settings
from stream.client.transport import KafkaTransport, Transport
from stream.closing import Closing
from stream.errors import (
    InferenceFailed,
    InferenceTimeout,
)
from stream.kafka.broker import connect_kafka

__all__ = ["Client", "Pending", "connect"]


def _now_ms() -> int:
    """The wall clock in epoch milliseconds: what ``x-deadline`` is written in."""
    return time.time_ns() // 1_000_000


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


class Client(Closing):
    """Inference over Kafka with the calls of SPEC §7; made by :func:`connect`."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        *,
        on_close: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.settings = settings
        self.custom = wire.is_custom(settings)
        self._transport = transport
        self._on_close = on_close
        self.clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._closed = False

    def infer(
        self,
        data: Any,
        timeout: float = 15.0,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        *,
        parameters: Mapping[str, object] | None = None,
    ) -> Any:
        """Serve ``data`` (DataFrame, Table, or JSON) and return the result in the same type.

        Raises InferenceFailed as soon as the request is dead-lettered, and InferenceTimeout
        when neither a result nor a dead letter came within ``timeout`` seconds.
        """
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        request = wire.build_request(data, options, custom=self.custom)
        return self._wait(self.send(request, timeout=timeout), timeout)

    def infer_from_file(  # noqa: PLR0917  # Wallaroo's signature, positional order included
        self,
        data: str | os.PathLike[str],
        timeout: float = 15.0,
        dataset: str | Sequence[str] | None = None,
        dataset_exclude: str | Sequence[str] | None = None,
        dataset_separator: str = ".",
        data_format: str | None = None,
        *,
        parameters: Mapping[str, object] | None = None,
    ) -> Any:
        """Serve the request in the file ``data``: ``.arrow`` (Arrow IPC file or stream) gives
        a Table, ``.json`` / ``.df.json`` (pandas-records) JSON rows; ``data_format=
        "custom-json"`` sends any JSON file as custom JSON. Other files are a ValueError naming
        the kinds."""
        request_data, fmt = files.read_request_file(data, data_format)
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        request = wire.build_request(request_data, options, custom=self.custom, fmt=fmt)
        return self._wait(self.send(request, timeout=timeout), timeout)

    async def parallel_infer(
        self,
        tensor_list: Sequence[Any],
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
        wire.uniform_kind(tensor_list)
        options = wire.Options.of(dataset, dataset_exclude, dataset_separator, parameters)
        _check_timeout(timeout)
        parallel = num_parallel if num_parallel is not None else 2 * (os.cpu_count() or 1)
        if not isinstance(parallel, int) or parallel < 1:
            raise ValueError(f"num_parallel must be a positive integer, not {num_parallel!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
        requests = [wire.build_request(item, options, custom=self.custom) for item in tensor_list]
        slots = asyncio.Semaphore(parallel)

        async def one(request: wire.Request) -> Any:
            async with slots:
                return await self._attempts(request, timeout, retries)

        return list(await asyncio.gather(*(one(request) for request in requests)))

    def send(self, request: wire.Request, *, timeout: float | None = None) -> Pending:
        """Send an encoded request under a fresh request id (the building block of the calls).

        With ``timeout`` (seconds), the request carries ``x-deadline`` = now + ``timeout`` in
        epoch milliseconds, unless its headers already hold one.
        """
        if self._closed:
            raise RuntimeError("this client is closed; connect again")
        if timeout is not None:
            request = self._with_deadline(request, timeout)
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

    def __repr__(self) -> str:
        kafka = self.settings.kafka
        state = "closed" if self._closed else "open"
        return f"<Client {self.settings.pipeline.name} {kafka.input_topic} ({state})>"

    def _with_deadline(self, request: wire.Request, timeout: float) -> wire.Request:
        """``request`` with ``x-deadline`` set ``timeout`` s from now, unless it has one."""
        if any(name.lower() == headers.DEADLINE for name, _ in request.headers):
            return request
        deadline = self._wall_clock_ms() + math.ceil(timeout * 1000)
        return replace(
            request, headers=(*request.headers, (headers.DEADLINE, str(deadline).encode()))
        )

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
                pending = self.send(request, timeout=timeout)
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


def connect(config: Deployment | None = None, *, connect_timeout: float = 10.0) -> Client:
    """A client for the deployment ``config``: a YAML path, loaded settings, or a deployment
    name looked up in ``$HEADRACE_CONFIG_DIR`` (default ``./configs``); with none,
    ``$HEADRACE_MODEL_ID`` names it (see :mod:`stream.client.deployments`).

    ``kafka.bootstrap_servers: embedded`` uses the broker on 127.0.0.1:19092, starting one if
    none answers (it stops when the client closes). Missing topics are created as the worker
    would. An unreachable broker raises KafkaUnavailable naming its address.
    """
    settings = resolve_settings(config)
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


def _check_timeout(timeout: float) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
