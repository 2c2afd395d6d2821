"""Running leaves under their timeout, retries and backoff, and chains of steps.

A leaf that can be stopped from outside (``terminable``: an ONNX run, terminated through
``RunOptions``) runs on the caller's thread while one watchdog thread per process times it: at
its timeout, or when its serve call is asked to stop, the watchdog fires the leaf's cancel token
and the run ends with a :class:`StepTimeout` (or :class:`Stopped`). No thread hand-off per batch.

Any other leaf (a Python function, which nothing can interrupt) runs on a helper thread and is
abandoned when it outlives ``timeout_ms``: its cancel token fires, the caller gets a
:class:`StepTimeout` at once, and a fresh thread serves the next attempt, so a hung step never
hangs the worker. A step keeps at most ``max_abandoned`` abandoned runs going; past that its
attempts fail fast as :class:`Saturated` until one of them ends.

Every wait honours the :class:`Watch` of the serve call around it, found in a context variable
so composite steps need not pass it on: its deadline cuts attempts and retries short
(:class:`BudgetSpent`), its ``should_stop`` ends the call (:class:`Stopped`), and its
``keep_alive`` is called about twice a second, so the worker can poll its consumer while a
step runs.
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from pipelines.errors import PipelineError, StepError, StepTimeout
from pipelines.frame import Frame, StepContext
from pipelines.steps.base import Cancel, Leaf, Step

__all__ = [
    "BudgetSpent",
    "Chain",
    "Guarded",
    "Saturated",
    "Stopped",
    "Watch",
    "abandon_limit",
    "backoff_delay",
    "isolation_levels",
    "watching",
]

T = TypeVar("T")
MAX_BACKOFF_S = 10.0
SLICE_S = 0.05  # a wait looks at should_stop this often
KEEP_ALIVE_EVERY_S = 0.5  # and calls keep_alive this often
MIN_ABANDONED = 4
WATCHDOG_TICK_S = SLICE_S  # the watchdog looks at the inline runs this often
WATCHDOG_REST_S = 1.0  # and rests, until the next run, after this long with none


def backoff_delay(
    attempt: int, backoff_ms: int, jitter: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): exponential, with +-50% jitter."""
    base = backoff_ms / 1000 * 2 ** (attempt - 1)
    return float(min(MAX_BACKOFF_S, base * (0.5 + jitter())))


def isolation_levels(requests: int) -> int:
    """How many times a batch of ``requests`` can be halved before its requests stand alone."""
    return max(0, (requests - 1).bit_length())


def abandon_limit(max_requests: int, retries: int) -> int:
    """Abandoned runs a step may keep going: what isolating two hanging requests leaves, + 1.

    Isolating one hanging request abandons one run per isolation level of the batch, then one
    per attempt of the request alone. With room for two, the next batch isolates its own
    hanging request (and serves its neighbours) while the first one's runs still hang.
    """
    return max(MIN_ABANDONED, 2 * (isolation_levels(max_requests) + retries + 1) + 1)


class Stopped(BaseException):
    """The serve call was asked to stop, or one of its hooks failed: not a request's fault.

    A ``BaseException``, like ``asyncio.CancelledError``, so that no step's ``except
    Exception`` mistakes it for a failure of its own.
    """


class BudgetSpent(StepTimeout):
    """An attempt not started, or cut short, because its serve call's time budget ran out."""


class Saturated(StepTimeout):
    """An attempt not started because the step already has ``max_abandoned`` runs going."""


class Watch:
    """One serve call's deadline and hooks, honoured by every wait of its step attempts."""

    def __init__(
        self,
        *,
        budget_s: float = math.inf,
        should_stop: Callable[[], bool] | None = None,
        keep_alive: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self.error: Exception | None = None  # a hook's own failure, raised by ``watching``
        self._should_stop = should_stop
        self._keep_alive = keep_alive
        self._clock = clock
        self._deadline = clock() + budget_s
        self._alive_at = clock()
        self._stopped = False

    @property
    def hooked(self) -> bool:
        return self._should_stop is not None or self._keep_alive is not None

    def left(self) -> float:
        """Seconds left of the budget."""
        return self._deadline - self._clock()

    def check(self) -> None:
        """Raise :class:`Stopped` if the call should stop; call ``keep_alive`` when it is due."""
        if not self._stopped:
            try:
                self._stopped = self._should_stop is not None and bool(self._should_stop())
                if not self._stopped:
                    self._beat()
            except Exception as exc:  # the caller's hook: stop the call, then raise it
                self.error = exc
                self._stopped = True
        if self._stopped:
            raise Stopped

    def stopping(self) -> bool:
        """:meth:`check` without raising: whether the call should stop (from any thread)."""
        try:
            self.check()
        except Stopped:
            return True
        return False

    def _beat(self) -> None:
        now = self._clock()
        if self._keep_alive is not None and now - self._alive_at >= KEEP_ALIVE_EVERY_S:
            self._alive_at = now
            self._keep_alive()

    def wait(self, future: Future[Any], seconds: float) -> bool:
        """Wait up to ``seconds`` for ``future``, checking the hooks each slice: is it done?"""
        end = self._clock() + seconds
        while not future.done():
            left = end - self._clock()
            if left <= 0:
                return False
            futures.wait([future], timeout=min(left, SLICE_S) if self.hooked else left)
            if not future.done():
                self.check()
        return True

    def sleep(self, seconds: float, sleep: Callable[[float], None]) -> None:
        """Sleep ``seconds`` with ``sleep``, in slices that check the hooks when there are any."""
        if not self.hooked:
            sleep(seconds)
            return
        while seconds > 0:
            pause = min(seconds, SLICE_S)
            sleep(pause)
            seconds -= pause
            self.check()


_WATCH: ContextVar[Watch | None] = ContextVar("headrace_watch", default=None)
_UNWATCHED = Watch()


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Let the step attempts made inside honour ``watch``; a hook's failure is raised after."""
    token = _WATCH.set(watch)
    try:
        yield watch
    except Stopped:
        if watch.error is not None:
            raise watch.error from None
        raise
    finally:
        _WATCH.reset(token)
    if watch.error is not None:
        raise watch.error


class Guarded(Generic[T]):
    """A leaf with its per-attempt timeout, retries and backoff, and a bound on stuck runs."""

    def __init__(
        self,
        leaf: Leaf[T],
        *,
        timeout_ms: int,
        retries: int,
        backoff_ms: int,
        max_abandoned: int = MIN_ABANDONED,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.leaf = leaf
        self.timeout_s = timeout_ms / 1000
        self.retries = retries
        self.backoff_ms = backoff_ms
        self.max_abandoned = max_abandoned
        self._sleep = sleep
        self._lock = threading.Lock()
        self._inline = bool(getattr(leaf, "terminable", False))
        self._worker: _DaemonWorker | None = None  # started at the first threaded attempt
        self._abandoned: list[Future[T]] = []

    @property
    def name(self) -> str:
        return self.leaf.name

    @property
    def kind(self) -> str:
        return self.leaf.kind

    def worst_case_s(self, *, retry: bool) -> float:
        """The longest one ``run`` takes: each attempt to its timeout, each backoff at its most."""
        if not retry:
            return self.timeout_s
        backoff = sum(
            backoff_delay(attempt, self.backoff_ms, jitter=lambda: 1.0)
            for attempt in range(1, self.retries + 1)
        )
        return (self.retries + 1) * self.timeout_s + backoff

    def run(self, data: T, context: StepContext, *, retry: bool) -> T:
        watch = _WATCH.get() or _UNWATCHED
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(data, context, watch)
            except PipelineError as exc:
                exc.step = exc.step or self.name
                exc.attempts = attempt
                delay = backoff_delay(attempt, self.backoff_ms)
                if (
                    exc.permanent
                    or attempt == attempts
                    or isinstance(exc, BudgetSpent)
                    or delay >= watch.left()
                ):
                    raise
            watch.sleep(delay, self._sleep)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _attempt(self, data: T, context: StepContext, watch: Watch) -> T:
        limit = min(self.timeout_s, watch.left())
        if limit <= 0:
            raise BudgetSpent(
                f"{self.kind} step '{self.name}' was not run: its serve call's time budget "
                f"of {watch.budget_s:.3g} s is spent"
            )
        cancel = Cancel()
        if self._inline:
            return self._attempt_inline(data, context, watch, limit, cancel)
        with self._lock:
            self._abandoned = [run for run in self._abandoned if not run.done()]
            if len(self._abandoned) >= self.max_abandoned:
                raise Saturated(
                    f"{self.kind} step '{self.name}' has {len(self._abandoned)} abandoned runs "
                    f"still going (each ran past its timeout of {self.timeout_s * 1000:.0f} ms); "
                    "no new run starts until one of them ends"
                )
            if self._worker is None:
                self._worker = _DaemonWorker(f"headrace-step-{self.name}")
            future: Future[T] = self._worker.submit(self.leaf, data, context, cancel)
        try:
            finished = watch.wait(future, limit)
        except BaseException:  # stopped: leave the run behind, as at a timeout
            self._abandon(future, cancel)
            raise
        if not finished:
            self._abandon(future, cancel)
            raise self._timed_out(limit, watch, "abandoned")
        try:
            return future.result()
        except PipelineError:
            raise
        except Exception as exc:
            raise StepError(f"{self.kind} step '{self.name}' failed: {exc}") from exc

    def _attempt_inline(
        self, data: T, context: StepContext, watch: Watch, limit: float, cancel: Cancel
    ) -> T:
        """Run a terminable leaf here, the watchdog cancelling it at ``limit`` or a stop."""
        timer = _WATCHDOG.arm(limit, cancel, watch)
        try:
            return self.leaf(data, context, cancel)
        except Exception as exc:
            if timer.fired == _STOPPED:
                raise Stopped from exc
            if timer.fired == _EXPIRED:
                raise self._timed_out(limit, watch, "terminated") from exc
            if isinstance(exc, PipelineError):
                raise
            raise StepError(f"{self.kind} step '{self.name}' failed: {exc}") from exc
        finally:
            _WATCHDOG.disarm(timer)

    def _timed_out(self, limit: float, watch: Watch, how: str) -> StepTimeout:
        if limit < self.timeout_s:
            return BudgetSpent(
                f"{self.kind} step '{self.name}' was {how} after {limit * 1000:.0f} ms: "
                f"its serve call's time budget of {watch.budget_s:.3g} s ran out"
            )
        return StepTimeout(
            f"{self.kind} step '{self.name}' ran past its timeout of "
            f"{self.timeout_s * 1000:.0f} ms and was {how}"
        )

    def _abandon(self, future: Future[T], cancel: Cancel) -> None:
        """Cancel the attempt and leave it to end on its own thread; later ones get a new one."""
        cancel.cancel()
        if future.done():
            return
        with self._lock:
            self._abandoned.append(future)
            if self._worker is not None:
                self._worker.retire()
                self._worker = None


_EXPIRED = "expired"
_STOPPED = "stopped"


class _Timer:
    """One inline run the watchdog times: when to cancel it, and why it fired if it did."""

    __slots__ = ("cancel", "deadline", "fired", "watch")

    def __init__(self, deadline: float, cancel: Cancel, watch: Watch) -> None:
        self.deadline = deadline
        self.cancel = cancel
        self.watch = watch
        self.fired: str | None = None

    def tick(self, now: float) -> None:
        if self.fired is not None:
            return
        if now >= self.deadline:
            self.fired = _EXPIRED
        elif self.watch.hooked and self.watch.stopping():
            self.fired = _STOPPED
        else:
            return
        self.cancel.cancel()


class _Watchdog:
    """One daemon thread per process that times the inline runs of every step.

    Arming and disarming a run are a dict write each (no lock, no wake-up): the thread ticks
    every ``WATCHDOG_TICK_S`` while runs come, and rests on an event once none has come for
    ``WATCHDOG_REST_S``; the first run after a rest wakes it.
    """

    def __init__(self) -> None:
        self._timers: dict[int, _Timer] = {}
        self._wake = threading.Event()
        self._resting = True
        self._started = False
        self._start_lock = threading.Lock()

    def arm(self, seconds: float, cancel: Cancel, watch: Watch) -> _Timer:
        timer = _Timer(time.monotonic() + seconds, cancel, watch)
        self._timers[id(timer)] = timer
        if self._resting:
            self._rouse()
        return timer

    def disarm(self, timer: _Timer) -> None:
        self._timers.pop(id(timer), None)

    def _rouse(self) -> None:
        with self._start_lock:
            if not self._started:
                self._started = True
                self._resting = False  # the thread starts awake
                threading.Thread(target=self._watch, name="headrace-watchdog", daemon=True).start()
        self._wake.set()

    def _watch(self) -> None:
        quiet_since = time.monotonic()
        while True:
            if not self._timers and time.monotonic() - quiet_since >= WATCHDOG_REST_S:
                self._resting = True
                if not self._timers:  # a run armed just now saw ``_resting`` or is seen here
                    self._wake.wait()
                self._wake.clear()
                self._resting = False
            time.sleep(WATCHDOG_TICK_S)
            now = time.monotonic()
            timers = list(self._timers.values())
            if timers:
                quiet_since = now
            for timer in timers:
                timer.tick(now)


_WATCHDOG = _Watchdog()


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
