"""Publish stage: each outcome, in ledger order, to the output or the dead-letter topic.

A result goes to the output topic (the input's partition number when the output topic has
it, else by key); a dead letter carries the request's key, bytes and headers plus the
``x-error-*`` and ``x-source-*`` headers, in the largest form that fits the producer (see
:mod:`stream.worker.delivery`). The broker's acknowledgement settles the request in the
ledger, which lets its offset be committed.

When a delivery fails:

- for a transient reason (timeout, leader change, brokers down ...): the record is produced
  again after a backoff, in offset order, and its partition produces nothing new until it is
  through (:class:`~stream.worker.delivery.InFlight`); after a few rounds ``/readyz`` says so,
  and the retries go on while the worker runs. A worker that stops leaves such a request
  uncommitted, to be served again.
- a result refused for good (too large, invalid, not authorised) becomes an ``output_error``
  dead letter;
- a dead letter refused as too large is produced again in a smaller form; refused for good
  otherwise, it becomes :attr:`Publisher.failure`: the worker cannot go on without losing it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import structlog

from pipelines.config import KafkaSettings
from pipelines.errors import OutputError
from stream.errors import WorkerError
from stream.headers import TRACEPARENT
from stream.kafka.protocols import Producer
from stream.ops.health import Health
from stream.ops.metrics import Metrics
from stream.types import DeadLetter, Headers, Outcome, Partition, Result
from stream.worker.commit import Committer
from stream.worker.delivery import DeadLetterShape, Delivery, InFlight, permanent, too_large
from stream.worker.ledger import Ledger
from stream.worker.tracing import Spans, parse_traceparent

__all__ = ["UNDELIVERED", "Publisher"]

_log = structlog.get_logger("headrace.worker")

UNDELIVERED = "undelivered"  # the Health hold while records fail again and again
_NOT_READY_AFTER_ROUNDS = 3


def _ignore(outcome: Outcome) -> None:
    del outcome


class Publisher:
    """Produces the ledger's ready outcomes and produces again what failed for a transient reason.

    ``observe`` hears of each outcome as it is first produced (a result refused for good
    again as its ``output_error`` dead letter): the guardrail counts them.
    """

    def __init__(
        self,
        producer: Producer,
        ledger: Ledger,
        committer: Committer,
        kafka: KafkaSettings,
        *,
        metrics: Metrics,
        health: Health,
        clock: Callable[[], float],
        wall_clock_ms: Callable[[], int],
        observe: Callable[[Outcome], None] = _ignore,
        spans: Spans | None = None,
    ) -> None:
        self._producer = producer
        self._ledger = ledger
        self._committer = committer
        self._kafka = kafka
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._observe = observe
        self._spans = spans or Spans()
        self._shape = DeadLetterShape(kafka)
        self._flight = InFlight()
        self._acked: list[Delivery] = []  # acknowledged since the last _settle()
        self._output_partitions = -1
        self.failure: WorkerError | None = None

    def publish(self) -> None:
        """Produce what is due again, then every outcome the ledger has ready, in order."""
        self._settle()  # acknowledgements a flush of the committer's took in
        again = self._flight.due(self._clock())
        if again:
            _log.info("producing records again", records=len(again))
        for delivery in again:
            self._produce(delivery)
        for outcome in self._ledger.ready(self._flight.held()):
            self._produce(self._first(outcome))
        self.poll(0)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for delivery reports, and settle them."""
        self._producer.poll(timeout)
        self._settle()
        self._report()

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every record to be reported; how many were not."""
        remaining = self._producer.flush(timeout)
        self._settle()
        self._report()
        return remaining

    def forget(self, partitions: Sequence[Partition]) -> None:
        """Revoked partitions: late delivery reports of theirs change nothing."""
        self._settle()
        self._flight.forget(partitions)
        self._report()

    def _settle(self) -> None:
        """Count what was acknowledged since the last call and take it out of flight.

        The ledger hears of each acknowledgement at once, inside ``poll``/``flush`` (a commit
        may follow any flush); this is the rest, done for all of them together.
        """
        acked, self._acked = self._acked, []
        if not acked:
            return
        self._flight.done_all(acked)
        results = [d.outcome for d in acked if type(d.outcome) is Result]
        if results:
            self._metrics.served(
                [result.rows for result in results],
                [result.envelope.timestamp_ms for result in results],
                self._wall_clock_ms(),
            )
        if len(results) < len(acked):
            for delivery in acked:
                if isinstance(delivery.outcome, DeadLetter):
                    self._metrics.dead_lettered(delivery.outcome.error.error_type)

    def _first(self, outcome: Outcome) -> Delivery:
        """The delivery of an outcome produced for the first time."""
        kafka = self._kafka
        if isinstance(outcome, Result) and len(outcome.value) > kafka.max_message_bytes:
            outcome = DeadLetter(
                outcome.envelope,
                OutputError(
                    f"result of {len(outcome.value)} bytes is over the limit of "
                    f"{kafka.max_message_bytes} bytes (kafka.max_message_bytes)"
                ),
            )
        self._observe(outcome)
        if isinstance(outcome, Result):
            return Delivery(outcome)
        return self._dead_letter(outcome)

    def _dead_letter(self, dead: DeadLetter) -> Delivery:
        envelope, error = dead.envelope, dead.error
        _log.info(
            "request dead-lettered",
            error_type=error.error_type,
            error=error.message,
            step=error.step,
            partition=str(envelope.partition),
            offset=envelope.offset,
        )
        failed_at_ms = self._wall_clock_ms()
        letter = self._shape(dead, failed_at_ms)
        assert letter is not None  # the smallest form is always there
        if self._spans.enabled:
            self._trace(dead, letter.headers, failed_at_ms)
        if letter.form > 0:
            _log.warning(
                "dead letter over the producer's limit: published without its value",
                partition=str(envelope.partition),
                offset=envelope.offset,
                limit=self._shape.limit,
                form=letter.form,
            )
        return Delivery(dead, letter)

    def _trace(self, dead: DeadLetter, sent: Headers, failed_at_ms: int) -> None:
        """A traced request's span, with the dead letter's error (its span id is the one in
        the ``traceparent`` the dead letter carries)."""
        envelope = dead.envelope
        original = envelope.header(TRACEPARENT)
        ours = next((value for key, value in sent if key.lower() == TRACEPARENT), None)
        found = None if original is None or ours is None else parse_traceparent(ours)
        if found is None or ours == original:
            return
        self._spans.consumed_span(
            envelope, found.span_id, end_ns=failed_at_ms * 1_000_000, error=dead.error
        )

    def _produce(self, delivery: Delivery) -> None:
        self._committer.before_produce()
        self._flight.add(delivery)
        outcome, letter = delivery.outcome, delivery.letter
        envelope = outcome.envelope
        delivered = functools.partial(self._delivered, delivery)
        if letter is None:
            assert isinstance(outcome, Result)
            self._producer.produce(
                self._kafka.output_topic,
                outcome.value,
                key=envelope.key,
                headers=outcome.headers,
                partition=self._output_partition(envelope.partition),
                on_delivery=delivered,
            )
        else:
            self._producer.produce(
                self._kafka.dead_letter_topic,
                letter.value,
                key=envelope.key,
                headers=letter.headers,
                partition=None,
                on_delivery=delivered,
            )

    def _delivered(self, delivery: Delivery, error: str | None) -> None:
        """A delivery report (inside ``poll``/``flush``): an acknowledgement goes to the
        ledger now and to :meth:`_settle` later; a failure is handled now."""
        if error is None:
            self._ledger.ack(delivery.outcome.envelope)  # it ignores a revoked partition's
            self._acked.append(delivery)
        elif not self._flight.owns(delivery):
            return  # of a partition revoked since: its new owner serves the request again
        elif not permanent(error):
            if self._flight.failed(delivery, error, self._clock()):
                _log.warning(
                    "delivery failed for a transient reason; producing it again",
                    partition=str(delivery.partition),
                    offset=delivery.offset,
                    error=error,
                )
        else:
            self._flight.done(delivery)
            self._refused(delivery, error)

    def _refused(self, delivery: Delivery, error: str) -> None:
        """A record the producer or broker refused for good."""
        outcome, envelope = delivery.outcome, delivery.outcome.envelope
        if isinstance(outcome, Result):
            topic = self._kafka.output_topic
            dead = DeadLetter(
                envelope, OutputError(f"result could not be published to '{topic}': {error}")
            )
            self._observe(dead)
            self._produce(self._dead_letter(dead))
            return
        smaller = None
        if too_large(error) and delivery.letter is not None:
            smaller = self._shape(outcome, self._wall_clock_ms(), after=delivery.letter.form)
        if smaller is None:
            self.failure = WorkerError(
                f"dead letter for {envelope.partition}@{envelope.offset} could not be "
                f"published to '{self._kafka.dead_letter_topic}': {error}"
            )
            return
        _log.warning(
            "dead letter refused as too large; producing it smaller",
            partition=str(envelope.partition),
            offset=envelope.offset,
            error=error,
            form=smaller.form,
        )
        self._produce(Delivery(outcome, smaller))

    def _report(self) -> None:
        """``/readyz`` is not ready while records of a partition fail round after round."""
        stuck = self._flight.stuck(_NOT_READY_AFTER_ROUNDS)
        if stuck is None:
            self._health.release(UNDELIVERED)
            return
        partition, rounds, error = stuck
        self._health.hold(
            UNDELIVERED,
            f"records of {partition} not delivered after {rounds} retries: {error}; retrying",
        )

    def _output_partition(self, source: Partition) -> int | None:
        """The input's partition number when the output topic has it, else by key."""
        if self._output_partitions < 0:
            self._output_partitions = self._producer.partitions_for(self._kafka.output_topic)
        return source.index if source.index < self._output_partitions else None
