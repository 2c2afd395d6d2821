"""What the worker takes in: partitions paused while a hold is on, and the guardrail.

Two holds pause the assigned partitions: back-pressure (in-flight rows or bytes over their
caps) and the guardrail (SPEC §5: ``processing.max_consecutive_failures`` requests in a row
failed in the steps, a broken model rather than bad input). The consumer keeps polling while
paused, so the worker keeps its group membership; what it consumed before is still served,
published and committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from stream.kafka.protocols import Consumer
from stream.ops.health import Health
from stream.types import DeadLetter, Outcome, Partition

__all__ = ["GUARDRAIL", "Guardrail", "Intake"]

_log = structlog.get_logger("headrace.worker")

GUARDRAIL = "guardrail"  # the name of its hold, on the Intake and on Health
_STEP_FAILURES = frozenset({"step_error", "step_timeout", "output_error"})
_MAX_DETAIL = 300  # characters of the last error in the /readyz reason


class Intake:
    """Pauses every assigned partition while any hold is on; resumes them when none is."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._holds: set[str] = set()
        self._paused: list[Partition] = []

    def hold(self, name: str) -> bool:
        """Put hold ``name`` on (pausing the partitions); True when it was not on yet."""
        if name in self._holds:
            return False
        self._holds.add(name)
        self.enforce()
        return True

    def holding(self, name: str) -> bool:
        """Whether hold ``name`` is on."""
        return name in self._holds

    def release(self, name: str) -> None:
        """Take hold ``name`` off; the partitions resume when no hold is left."""
        self._holds.discard(name)
        if not self._holds and self._paused:
            self._consumer.resume(self._paused)
            self._paused = []

    def enforce(self) -> None:
        """While held, pause the partitions assigned since (called every iteration)."""
        if self._holds:
            new = [p for p in self._consumer.assignment() if p not in self._paused]
            if new:
                self._consumer.pause(new)
                self._paused += new

    def revoked(self, partitions: Sequence[Partition]) -> None:
        self._paused = [p for p in self._paused if p not in partitions]


class Guardrail:
    """Counts requests failing in the steps in a row; at ``limit`` (0: never) it stops intake.

    A served request resets the count; decode, schema, too_large and expired dead letters
    neither count nor reset it. Once tripped, the partitions stay paused and ``/readyz``
    names the reason until :meth:`reset` (a reload, SIGHUP).
    """

    def __init__(self, limit: int, intake: Intake, health: Health) -> None:
        self._limit = limit
        self._intake = intake
        self._health = health
        self._count = 0
        self.reason: str | None = None

    def observe(self, outcome: Outcome) -> None:
        """Count one outcome, in the order outcomes are published."""
        if not isinstance(outcome, DeadLetter):
            self._count = 0
            return
        if outcome.error.error_type not in _STEP_FAILURES:
            return
        self._count += 1
        if self._limit and self._count >= self._limit and self.reason is None:
            self._trip(outcome)

    def reset(self, limit: int) -> None:
        """Count from zero with ``limit`` and resume intake (after a reload)."""
        self._limit, self._count = limit, 0
        if self.reason is not None:
            _log.info("guardrail lifted: consuming again", after=self.reason)
            self.reason = None
            self._intake.release(GUARDRAIL)
            self._health.release(GUARDRAIL)

    def _trip(self, last: DeadLetter) -> None:
        error = last.error
        where = f" in step '{error.step}'" if error.step else ""
        detail = (
            error.message
            if len(error.message) <= _MAX_DETAIL
            else error.message[:_MAX_DETAIL] + "..."
        )
        self.reason = (
            f"guardrail: {self._count} requests in a row failed in the steps; "
            f"last: {error.error_type}{where}: {detail}; "
            "fix the model and reload (SIGHUP) or restart"
        )
        _log.error("guardrail tripped: stopped consuming", reason=self.reason)
        self._intake.hold(GUARDRAIL)
        self._health.hold(GUARDRAIL, self.reason)
