"""``client.infer`` under a paced load: latencies from each call's scheduled time.

The client is looked up at run time (``stream.connect``): the bench still runs where it is
missing, and reports the row as skipped.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["THREADS", "Latencies", "find_connect", "measure_client"]

THREADS = 32
_WARM_UP_CALLS = 10  # the first calls wait for the worker's group join
_ALONE_CALLS = 20


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
    rate: float,
    seconds: float,
) -> Latencies:
    """Connect to ``config`` with ``environment`` set, warm up, then call ``infer(row)``
    ``rate`` times a second for ``seconds`` from :data:`THREADS` threads sharing the client."""
    measured = Latencies()
    with _environment(environment):
        client = connect(config)
    try:
        for _ in range(_WARM_UP_CALLS):
            client.infer(row, timeout=60)
        for _ in range(_ALONE_CALLS):
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

    start = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for index in range(int(rate * seconds)):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(timed, due)


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
