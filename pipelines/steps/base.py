"""The two contracts of the chain: a ``Leaf`` does the work, a ``Step`` is what the chain runs.

A leaf (model, python function) is called once per attempt with a :class:`Cancel` token it
can hook to stop early; :class:`pipelines.runner.Guarded` wraps it with the timeout, retries
and backoff of its config. A leaf whose hook really stops a run in progress says so with a
true ``terminable`` attribute, and is run on the caller's thread. Composite steps (split,
shadow) and checks are steps directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from pipelines.frame import Frame, StepContext

__all__ = ["Cancel", "Leaf", "Step"]

T = TypeVar("T")


class Cancel:
    """Set by the runner when an attempt is abandoned; leaves register how to stop early."""

    __slots__ = ("_callbacks", "_lock", "cancelled")

    def __init__(self) -> None:
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(callback)
                return
        callback()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


class Leaf(Protocol[T]):
    """One attempt of a unit of work: on a frame, or on one custom JSON value."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def __call__(self, data: T, context: StepContext, cancel: Cancel, /) -> T: ...


class Step(Protocol):
    """A step of the chain. ``retry`` says whether failed attempts may be retried here."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def run(self, frame: Frame, context: StepContext, *, retry: bool) -> Frame: ...
