"""Micro-batching: requests that can share a batch flush at ``max_rows`` or ``max_wait_ms``."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from stream.worker.decoding import Decoded

__all__ = ["Batch", "Batcher"]


@dataclass(slots=True)
class Batch:
    """Requests with one batch key, in the order they were consumed."""

    key: Hashable
    opened_at: float
    requests: list[Decoded] = field(default_factory=list)
    rows: int = 0


class Batcher:
    """Groups decoded requests by batch key; a batch is due when full or old enough."""

    def __init__(self, max_rows: int, max_wait_ms: int, clock: Callable[[], float]) -> None:
        self.max_rows = max_rows
        self.max_wait_s = max_wait_ms / 1000
        self._clock = clock
        self._open: dict[Hashable, Batch] = {}

    def add(self, request: Decoded) -> list[Batch]:
        """Add a request; returns the batches that became full (they leave the batcher)."""
        full = []
        key = request.batch_key
        batch = self._open.get(key)
        if batch is not None and batch.rows + request.rows > self.max_rows:
            full.append(self._open.pop(key))
            batch = None
        if batch is None:
            batch = self._open[key] = Batch(key, self._clock())
        batch.requests.append(request)
        batch.rows += request.rows
        if batch.rows >= self.max_rows:
            full.append(self._open.pop(key))
        return full

    def due(self) -> list[Batch]:
        """Batches whose first request has waited ``max_wait_ms``."""
        now = self._clock()
        expired = [key for key, b in self._open.items() if now - b.opened_at >= self.max_wait_s]
        return [self._open.pop(key) for key in expired]

    def drain(self) -> list[Batch]:
        """Every open batch, due or not (shutdown and rebalance)."""
        batches, self._open = list(self._open.values()), {}
        return batches

    @property
    def rows(self) -> int:
        return sum(batch.rows for batch in self._open.values())
