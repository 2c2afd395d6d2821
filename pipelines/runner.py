"""Running leaves under their timeout, retries and backoff, and chains of steps.

An attempt runs on a helper thread and is abandoned when it outlives ``timeout_ms``: the leaf's
cancel token fires (an ONNX run is terminated through ``RunOptions``), the caller gets a
:class:`StepTimeout` at once, and a fresh thread serves the next attempt, so a hung step never
hangs the worker.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from pipelines.errors import PipelineError, StepError, StepTimeout
from pipelines.frame import Frame, StepContext
from pipelines.steps.base import Cancel, Leaf, Step

__all__ = ["Chain", "Guarded", "backoff_delay"]

T = TypeVar("T")
MAX_BACKOFF_S = 10.0


def backoff_delay(
    attempt: int, backoff_ms: int, jitter: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, with +-50% jitter."""
    base = backoff_ms / 1000 * 2 ** (attempt - 1)
    return float(min(MAX_BACKOFF_S, base * (0.5 + jitter())))


class Guarded(Generic[T]):
    """A leaf with its per-attempt timeout, retries and backoff."""

    def __init__(
        self,
        leaf: Leaf[T],
        *,
        timeout_ms: int,
        retries: int,
        backoff_ms: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.leaf = leaf
        self.timeout_s = timeout_ms / 1000
        self.retries = retries
        self.backoff_ms = backoff_ms
        self._sleep = sleep
        self._lock = threading.Lock()
        self._worker = _DaemonWorker(f"headrace-step-{leaf.name}")

    @property
    def name(self) -> str:
        return self.leaf.name

    @property
    def kind(self) -> str:
        return self.leaf.kind

    def run(self, data: T, context: StepContext, *, retry: bool) -> T:
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(data, context)
            except PipelineError as exc:
                exc.step = exc.step or self.name
                exc.attempts = attempt
                if exc.permanent or attempt == attempts:
                    raise
            self._sleep(backoff_delay(attempt, self.backoff_ms))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, data: T, context: StepContext) -> T:
        cancel = Cancel()
        with self._lock:
            future: Future[T] = self._worker.submit(self.leaf, data, context, cancel)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            cancel.cancel()
            self._abandon(future)
            raise StepTimeout(
                f"{self.leaf.kind} step '{self.name}' ran past its timeout of "
                f"{self.timeout_s * 1000:.0f} ms and was abandoned"
            ) from None
        except PipelineError:
            raise
        except Exception as exc:
            raise StepError(f"{self.kind} step '{self.name}' failed: {exc}") from exc

    def _abandon(self, future: Future[T]) -> None:
        """Leave the stuck attempt to finish on its own thread; later attempts get a new one."""
        if future.done():
            return
        with self._lock:
            self._worker.retire()
            self._worker = _DaemonWorker(f"headrace-step-{self.name}")


class _DaemonWorker:
    """One daemon thread running submitted calls in order; a stuck call never blocks exit."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._calls = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, function, args))
        return future

    def retire(self) -> None:
        """Let the thread end once its current call returns."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, function, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)


class Chain:
    """Steps run in order on a frame; ``elapsed`` collects nanoseconds per step."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    def run(
        self, frame: Frame, context: StepContext, *, retry: bool, elapsed: list[int] | None = None
    ) -> Frame:
        for step in self.steps:
            started = time.perf_counter_ns()
            try:
                frame = step.run(frame, context, retry=retry)
            except PipelineError as exc:
                exc.step = exc.step or step.name
                raise
            except Exception as exc:
                raise StepError(
                    f"{step.kind} step '{step.name}' failed: {type(exc).__name__}: {exc}",
                    step=step.name,
                ) from exc
            if elapsed is not None:
                elapsed.append(time.perf_counter_ns() - started)
        return frame
