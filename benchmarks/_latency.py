"""Latency of one row: ``client.infer`` one call at a time and under a paced load, next to the
broker's own one-way produce -> consume latency measured on the same broker.

The client is looked up at run time (``stream.connect``): the bench still runs where it is
missing, and reports the rows as skipped.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from benchmarks._harness import wait_until
from benchmarks._kafka import PEER_CONSUMER, create_topics, delete_topics

__all__ = [
    "BROKER_SETTINGS",
    "THREADS",
    "Latencies",
    "broker_one_way",
    "broker_one_way_paced",
    "find_connect",
    "measure_client",
]

THREADS = 32
_WARM_UP_CALLS = 10  # the first calls wait for the worker's group join
BROKER_SETTINGS = (
    f"producer linger.ms=0, acks=all; consumer fetch.wait.max.ms="
    f"{PEER_CONSUMER['fetch.wait.max.ms']} (the worker's)"
)


@dataclass(slots=True)
class Latencies:
    """What a paced run of ``infer`` calls measured, in milliseconds."""

    scheduled: list[float] = field(default_factory=list)  # scheduled time -> return
    service: list[float] = field(default_factory=list)  # actual start -> return
    alone: list[float] = field(default_factory=list)  # one call at a time, no load
    errors: int = 0
    achieved: float = 0.0  # calls done per second


def find_connect() -> Callable[..., Any] | None:
    """``stream.connect``, or None when the client is not there (yet)."""
    import stream  # noqa: PLC0415  # looked up at run time: the client may not exist yet

    found = getattr(stream, "connect", None)
    if found is None:
        try:
            found = getattr(importlib.import_module("stream.client.client"), "connect", None)
        except ImportError:
            return None
    return found if callable(found) else None


def measure_client(
    connect: Callable[..., Any],
    config: Path,
    environment: Mapping[str, str],
    row: object,
    *,
    alone: int,
    rate: float,
    seconds: float,
) -> Latencies:
    """Connect to ``config`` with ``environment`` set, warm up, call ``infer(row)`` ``alone``
    times one at a time, then ``rate`` times a second for ``seconds`` from :data:`THREADS`
    threads sharing the client."""
    measured = Latencies()
    with _environment(environment):
        client = connect(config)
    try:
        for _ in range(_WARM_UP_CALLS):
            client.infer(row, timeout=60)
        for _ in range(alone):
            began = time.perf_counter()
            client.infer(row, timeout=15)
            measured.alone.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        _paced(lambda: client.infer(row, timeout=15), rate, seconds, measured)
        measured.achieved = (len(measured.scheduled) + measured.errors) / (
            time.perf_counter() - began
        )
    finally:
        client.close()
    return measured


def _one_way_clients(bootstrap: str, topic: str, partitions: int) -> tuple[Producer, Consumer]:
    """A fresh topic, a producer sending each record at once (``linger.ms`` 0, acks=all) and a
    consumer assigned to all of it that polls as the worker's does (BROKER_SETTINGS)."""
    create_topics(bootstrap, [topic], partitions)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all", "log_level": 2}
    )
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "fetch.wait.max.ms": PEER_CONSUMER["fetch.wait.max.ms"],
            "enable.auto.commit": False,
            "log_level": 2,
        }
    )
    consumer.assign([TopicPartition(topic, index, OFFSET_BEGINNING) for index in range(partitions)])
    return producer, consumer


def broker_one_way(bootstrap: str, topic: str, count: int) -> list[float]:
    """Milliseconds from ``produce`` to ``consume`` of one small record, one at a time,
    ``count`` times (after 20 to warm up), on a fresh one-partition topic."""
    producer, consumer = _one_way_clients(bootstrap, topic, 1)
    found: list[float] = []
    try:
        for index in range(count + 20):
            began = time.perf_counter()
            producer.produce(topic, str(time.time_ns()).encode())
            producer.poll(0)
            if not _received(consumer, 10.0):
                raise RuntimeError(f"a record produced to '{topic}' was not consumed in 10 s")
            if index >= 20:
                found.append((time.perf_counter() - began) * 1000)
    finally:
        consumer.close()
        producer.flush(5)
        delete_topics(bootstrap, [topic])
    return found


def broker_one_way_paced(
    bootstrap: str, topic: str, *, rate: float, seconds: float, partitions: int
) -> list[float]:
    """Milliseconds from ``produce`` to ``consume`` of small records produced ``rate`` times a
    second for ``seconds`` to a fresh topic of ``partitions`` partitions, with the settings of
    :func:`broker_one_way`: the broker's own latency under the load of the paced client run,
    its topic growing as the client's do (the embedded broker slows down as they grow)."""
    producer, consumer = _one_way_clients(bootstrap, topic, partitions)
    found: list[float] = []
    received = 0
    stop = threading.Event()

    def read() -> None:  # stamps each record as it arrives, on a thread of its own
        nonlocal received
        while not stop.is_set():
            message = consumer.poll(0.05)
            if message is None or message.error() is not None:
                continue
            received += 1
            sent_ns = int(message.value() or b"0")
            if sent_ns > 0:  # warm-up records carry 0
                found.append((time.perf_counter_ns() - sent_ns) / 1e6)

    reader = threading.Thread(target=read, name="one-way-reader", daemon=True)
    reader.start()
    try:
        for _ in range(20):  # the first fetches wait for the offset lookup
            producer.produce(topic, b"0")
        producer.flush(10)
        if not wait_until(lambda: received >= 20, 10.0, every=0.01):
            raise RuntimeError(f"records produced to '{topic}' were not consumed in 10 s")
        count = int(rate * seconds)
        for _ in _schedule(rate, count):
            producer.produce(topic, str(time.perf_counter_ns()).encode())
            producer.poll(0)
        producer.flush(10)
        if not wait_until(lambda: len(found) >= count, 10.0, every=0.01):
            raise RuntimeError(f"{count - len(found)} records of '{topic}' not consumed in 10 s")
    finally:
        stop.set()
        reader.join()
        consumer.close()
        delete_topics(bootstrap, [topic])
    return found


def _received(consumer: Consumer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            return True
    return False


def _paced(call: Callable[[], object], rate: float, seconds: float, into: Latencies) -> None:
    """Start ``call`` at ``rate`` per second for ``seconds``, open loop: a slow call delays
    nothing but itself, and the time it waited for a free thread counts in ``scheduled``."""

    def timed(due: float) -> None:
        began = time.perf_counter()
        try:
            call()
        except Exception:  # a failed call is counted, the run goes on
            into.errors += 1
            return
        ended = time.perf_counter()
        into.scheduled.append((ended - due) * 1000)
        into.service.append((ended - began) * 1000)

    with ThreadPoolExecutor(THREADS) as pool:
        for due in _schedule(rate, int(rate * seconds)):
            pool.submit(timed, due)


def _schedule(rate: float, count: int) -> Iterator[float]:
    """``count`` moments ``1 / rate`` apart from now, each yielded once it has come (open loop:
    a late consumer of one moment does not push the next ones back)."""
    start = time.perf_counter()
    for index in range(count):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield due


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` meanwhile (the client reads its settings from there)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
