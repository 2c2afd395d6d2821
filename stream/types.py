"""Immutable values of the worker: a partition, a consumed request, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.errors import PipelineError

__all__ = ["DeadLetter", "Envelope", "Outcome", "Partition", "Result"]

Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True, order=True)
class Partition:
    """A topic partition. It keys the ledger's and the publisher's maps several times per
    request: its hash is computed once."""

    topic: str
    index: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.topic, self.index)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"{self.topic}[{self.index}]"


@dataclass(slots=True, eq=False)  # not frozen: one is made per message, and frozen costs ~1 µs
class Envelope:
    """One request as consumed: its position, key, bytes, headers and timestamp. Treat it as
    immutable (``dataclasses.replace`` makes a changed copy); it compares by identity."""

    partition: Partition
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        found = None
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                found = value
        return found

    def header_text(self, name: str) -> str | None:
        value = self.header(name)
        return None if value is None else value.decode("utf-8", errors="replace")

    @property
    def request_id(self) -> str:
        """``x-request-id``, or :attr:`position` when the request sent none."""
        return self.header_text("x-request-id") or self.position

    @property
    def position(self) -> str:
        """``<topic>:<partition>:<offset>``: where the request was read."""
        return f"{self.partition.topic}:{self.partition.index}:{self.offset}"


@dataclass(slots=True, eq=False)
class Result:
    """A served request: the bytes and headers to publish on the output topic."""

    envelope: Envelope
    value: bytes
    headers: Headers
    rows: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A request that cannot be served, with the error that says why."""

    envelope: Envelope
    error: PipelineError


Outcome = Result | DeadLetter
