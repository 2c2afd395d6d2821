"""The errors the client raises, drawn once.

    RuntimeError
    └── InferenceFailed     the request was dead-lettered (or never left this process)
    TimeoutError
    └── InferenceTimeout    nothing came back for the request in time

``InferenceFailed`` carries the dead letter's ``x-error-type`` and ``x-error-message``; a
request the producer refused locally gets ``too_large`` or ``delivery_error``. Connecting
raises ``stream.topics.KafkaUnavailable`` (a ``RuntimeError`` naming the broker address).
"""

from __future__ import annotations

__all__ = ["DELIVERY_ERROR", "InferenceFailed", "InferenceTimeout"]

DELIVERY_ERROR = "delivery_error"  # error type of a request the producer could not send


class InferenceFailed(RuntimeError):  # noqa: N818  # the name of the SPEC's API
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


class InferenceTimeout(TimeoutError):  # noqa: N818  # the name of the SPEC's API
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
