"""What the publisher decides about one record: whether a refusal is worth another try, what
form of a dead letter fits the producer, and which records of a partition are still in flight.

- :func:`permanent` and :func:`too_large` read librdkafka's delivery error (``NAME: text``).
  Only refusals of the record itself or of the client's rights are permanent; anything else
  (timeouts, leader changes, brokers down, and errors not known here) is transient: the record
  is produced again, because a worker that stalls visibly is better than a request answered
  twice (a result and a dead letter) or drained into the dead-letter topic.
- :class:`DeadLetterShape` builds a dead letter's value and headers in the largest form that
  fits the producer's limit: whole; without its value (``x-original-bytes``); without the
  request's pass-through headers (``x-dropped-headers``); without any request header.
- :class:`InFlight` holds every record handed to the producer until its delivery is reported,
  and the partitions held back while a failed record waits to be produced again.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Sequence
from dataclasses import dataclass, field, replace

from pipelines.config import KafkaSettings
from pipelines.errors import TooLarge
from stream.headers import DROPPED_HEADERS, ORIGINAL_BYTES, REQUEST_ID, dead_letter_headers
from stream.kafka.config import FRAMING_BYTES
from stream.types import DeadLetter, Headers, Outcome, Partition
from stream.worker.tracing import with_child

__all__ = [
    "DeadLetterShape",
    "Delivery",
    "InFlight",
    "Letter",
    "permanent",
    "record_bytes",
    "too_large",
]


_TOO_LARGE = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
_PERMANENT = _TOO_LARGE | {
    "INVALID_RECORD",
    "INVALID_TIMESTAMP",
    "POLICY_VIOLATION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "UNSUPPORTED_VERSION",
    "INVALID_TOPIC_EXCEPTION",
    "TOPIC_AUTHORIZATION_FAILED",
    "CLUSTER_AUTHORIZATION_FAILED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "_INVALID_ARG",
    "_BAD_MSG",
    "_KEY_SERIALIZATION",
    "_VALUE_SERIALIZATION",
}
# Room left under the producer's limit for what librdkafka and the broker add to a record
# (record and batch headers, varints); a dead letter estimated to fit within it does.
SAFETY_BYTES = 1024
_PER_HEADER = 10  # two varint lengths
_PER_RECORD = 64

_BACKOFF_S = 0.1  # before the first retry round; doubles each round ...
_MAX_BACKOFF_S = 5.0  # ... up to this
_TOLERANCE_S = 1e-9  # clock sums like 0.305 + 0.4 fall a hair past 0.705


def _name(error: str) -> str:
    return error.split(":", 1)[0].strip()


def permanent(error: str) -> bool:
    """Whether a delivery error refuses the record for good (another try cannot succeed)."""
    return _name(error) in _PERMANENT


def too_large(error: str) -> bool:
    """Whether a delivery error says the record is over a size limit."""
    return _name(error) in _TOO_LARGE


def record_bytes(key: bytes | None, value: bytes, headers: Headers) -> int:
    """An upper estimate of a record's size as the producer measures it."""
    size = _PER_RECORD + len(key or b"") + len(value)
    for name, text in headers:
        size += _PER_HEADER + len(name.encode("utf-8", "surrogatepass")) + len(text)
    return size


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter ready to produce; ``form`` counts how much was left out (0: nothing)."""

    value: bytes
    headers: Headers
    form: int


class DeadLetterShape:
    """Builds a dead letter in the largest form that fits the producer's message limit."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.limit = kafka.max_message_bytes + FRAMING_BYTES - SAFETY_BYTES
        self._group_id = kafka.group_id

    def __call__(self, dead: DeadLetter, failed_at_ms: int, after: int = -1) -> Letter | None:
        """The first form past ``after`` that fits (else the smallest); None when none is left."""
        smallest = None
        for form in self._forms(dead, failed_at_ms):
            if form.form <= after:
                continue
            if record_bytes(dead.envelope.key, form.value, form.headers) <= self.limit:
                return form
            smallest = form
        return smallest

    def _forms(self, dead: DeadLetter, failed_at_ms: int) -> Iterator[Letter]:
        """Whole; without the value; without the request's headers but ``x-request-id``;
        without any of them (the forms that leave something more out than the one before)."""
        envelope, error = dead.envelope, dead.error
        envelope = replace(envelope, headers=with_child(envelope.headers)[0])

        def headers(kept: Headers, extra: Headers) -> Headers:
            own = replace(envelope, headers=kept)
            built = dead_letter_headers(
                own, error, group_id=self._group_id, failed_at_ms=failed_at_ms
            )
            return built + extra

        size: Headers = ((ORIGINAL_BYTES, str(len(envelope.value)).encode()),)
        if not isinstance(error, TooLarge):  # a too_large request cannot fit in any form
            yield Letter(envelope.value, headers(envelope.headers, ()), 0)
        yield Letter(b"", headers(envelope.headers, size), 1)
        ids = tuple(pair for pair in envelope.headers if pair[0].lower() == REQUEST_ID)
        none: Headers = ()
        before = len(envelope.headers)
        for form, kept in ((2, ids), (3, none)):
            if len(kept) < before:
                dropped = b"%d" % (len(envelope.headers) - len(kept))
                yield Letter(b"", headers(kept, (*size, (DROPPED_HEADERS, dropped))), form)
                before = len(kept)


@dataclass(eq=False, slots=True)
class Delivery:
    """One record handed to the producer: a result, or a dead letter in the form it was sent."""

    outcome: Outcome
    letter: Letter | None = None  # a dead letter's value and headers

    @property
    def partition(self) -> Partition:
        return self.outcome.envelope.partition

    @property
    def offset(self) -> int:
        return self.outcome.envelope.offset


@dataclass(slots=True)
class _Held:
    """A partition whose failed records wait to be produced again."""

    waiting: list[Delivery] = field(default_factory=list)
    rounds: int = 0  # retry rounds produced so far
    due_at: float = 0.0
    error: str = ""


class InFlight:
    """Records in flight by input partition, and the partitions held for a retry.

    Once a record of a partition fails for a transient reason, nothing new of that partition
    is produced until every record of it in flight has been reported and the failed ones,
    produced again in offset order, are acknowledged. Records already in flight when the
    failure was reported cannot be called back and may land before the retry.
    """

    def __init__(self) -> None:
        self._live: dict[Partition, set[Delivery]] = {}
        self._held: dict[Partition, _Held] = {}

    def add(self, delivery: Delivery) -> None:
        partition = delivery.partition
        live = self._live.get(partition)
        if live is None:
            live = self._live[partition] = set()
        live.add(delivery)

    def owns(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is in flight for us (not of a partition revoked since)."""
        return delivery in self._live.get(delivery.partition, ())

    def done(self, delivery: Delivery) -> None:
        """``delivery`` was acknowledged, or refused for good."""
        self.done_all((delivery,))

    def done_all(self, deliveries: Sequence[Delivery]) -> None:
        """Each of ``deliveries`` was acknowledged, or refused for good; a held partition whose
        failed records are all through is released."""
        live_of, held_of = self._live, self._held
        for delivery in deliveries:
            partition = delivery.outcome.envelope.partition
            live = live_of.get(partition)
            if live is not None:
                live.discard(delivery)
            if held_of:
                held = held_of.get(partition)
                if held is not None and not held.waiting and not live:
                    del held_of[partition]  # every failed record is through

    def failed(self, delivery: Delivery, error: str, now: float) -> bool:
        """Hold ``delivery`` for the next round; True when its partition was not held yet."""
        self._live.get(delivery.partition, set()).discard(delivery)
        held = self._held.get(delivery.partition)
        new = held is None
        if held is None:
            held = self._held[delivery.partition] = _Held()
        if not held.waiting:
            held.due_at = now + min(_MAX_BACKOFF_S, _BACKOFF_S * 2**held.rounds)
        held.waiting.append(delivery)
        held.error = error
        return new

    def due(self, now: float) -> list[Delivery]:
        """The held records whose backoff has passed, in offset order per partition."""
        found: list[Delivery] = []
        for held in self._held.values():
            if held.waiting and now >= held.due_at - _TOLERANCE_S:
                held.rounds += 1
                found += sorted(held.waiting, key=lambda d: d.offset)
                held.waiting = []
        return found

    def held(self) -> KeysView[Partition]:
        """Partitions that produce nothing new for now (a live view)."""
        return self._held.keys()

    def stuck(self, rounds: int) -> tuple[Partition, int, str] | None:
        """A partition whose records failed again after ``rounds`` retry rounds, if any."""
        for partition, held in self._held.items():
            if held.rounds >= rounds:
                return partition, held.rounds, held.error
        return None

    def forget(self, partitions: Sequence[Partition]) -> None:
        """Drop revoked partitions: their late reports are ignored."""
        for partition in partitions:
            self._live.pop(partition, None)
            self._held.pop(partition, None)
