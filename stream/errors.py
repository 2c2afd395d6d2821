"""Every error ``stream`` raises, drawn once.

    StreamError                  the base: ``except stream.StreamError`` catches them all
    ├── KafkaUnavailable         the broker did not answer in time (names its address)
    ├── BrokerStartError         the embedded broker did not come up (names its address, log)
    ├── TopicError               the broker refused a topic operation, or a topic is missing
    ├── KafkaClientError         a consumer or producer call failed (librdkafka's reason)
    ├── CommitFailed             an offset commit was refused (the worker logs it and goes on)
    ├── TransactionAborted       exactly_once: the transaction was aborted (a signal to rewind)
    ├── WorkerError              the worker cannot go on without losing requests
    ├── DlqError                 reading, replaying or committing dead letters failed
    ├── UnknownDeployment        no config in the configs folder has that deployment name
    ├── InferenceFailed          the client's request was dead-lettered (also a RuntimeError)
    └── InferenceTimeout         nothing came back for the request in time (also a TimeoutError)

Errors of a request's content are ``pipelines.PipelineError`` (decode, schema, step ...): they
become dead letters and never leave the worker. librdkafka's ``KafkaException`` is translated
into this tree at one boundary, :mod:`stream.kafka`, with ``raise ... from exc``.

``InferenceFailed`` carries the dead letter's ``x-error-type`` and ``x-error-message``; a
request the producer refused locally gets ``too_large`` or ``delivery_error``.
"""

from __future__ import annotations

__all__ = [
    "DELIVERY_ERROR",
    "BrokerStartError",
    "CommitFailed",
    "DlqError",
    "InferenceFailed",
    "InferenceTimeout",
    "KafkaClientError",
    "KafkaUnavailable",
    "StreamError",
    "TopicError",
    "TransactionAborted",
    "UnknownDeployment",
    "WorkerError",
]

DELIVERY_ERROR = "delivery_error"  # error type of a request the producer could not send


class StreamError(Exception):
    """The base of every error raised by ``stream``."""


class KafkaUnavailable(StreamError):  # noqa: N818  # the name the SPEC's callers use
    """The broker at ``address`` did not answer within the time allowed."""

    def __init__(self, address: str, timeout: float, reason: str) -> None:
        super().__init__(
            f"cannot reach Kafka at {address} within {timeout:g} s: {reason} "
            "(is the broker running? check kafka.bootstrap_servers)"
        )
        self.address = address


class BrokerStartError(StreamError):
    """The embedded broker did not come up; the message names the address and its last log lines."""


class TopicError(StreamError):
    """The broker answered but refused a topic operation, or the topic does not exist."""


class KafkaClientError(StreamError):
    """A consumer or producer call failed: refused by the broker, no answer in time, or a read
    that cannot go on (topic gone, not authorised, fatal); the message is librdkafka's reason."""


class CommitFailed(StreamError):  # noqa: N818  # reads as what happened
    """The broker refused an offset commit; the message says which offsets and why."""


class TransactionAborted(StreamError):  # noqa: N818  # a signal, not a failure of the worker
    """The transaction was aborted; the worker rewinds to the last committed offsets."""


class WorkerError(StreamError):
    """The worker cannot go on without losing requests (e.g. a dead letter was refused)."""


class DlqError(StreamError):
    """Reading, replaying or committing dead letters failed; the message says what and where."""


class UnknownDeployment(StreamError, LookupError):  # noqa: N818  # reads as what happened
    """A deployment name matches no config; the message lists the names found and the folder."""


class InferenceFailed(StreamError, RuntimeError):  # noqa: N818  # the name of the SPEC's API
    """The worker dead-lettered the request: ``error_type`` and ``message`` say why."""

    def __init__(
        self, error_type: str, message: str, request_id: str, *, step: str | None = None
    ) -> None:
        where = f" in step '{step}'" if step else ""
        super().__init__(f"request {request_id} failed{where}: {error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.step = step

    def __reduce__(self) -> tuple[object, ...]:
        return (_failed, (self.error_type, self.message, self.request_id, self.step))


class InferenceTimeout(StreamError, TimeoutError):  # noqa: N818  # the name of the SPEC's API
    """No result and no dead letter arrived for the request within ``timeout`` seconds."""

    def __init__(self, request_id: str, timeout: float, detail: str = "") -> None:
        text = f"no result for request {request_id} within {timeout:g} s"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.request_id = request_id
        self.timeout = timeout
        self.detail = detail

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.request_id, self.timeout, self.detail))


def _failed(error_type: str, message: str, request_id: str, step: str | None) -> InferenceFailed:
    return InferenceFailed(error_type, message, request_id, step=step)
