"""The errors headrace raises, drawn once.

    PipelineError              any failure to serve a request
    ├── ConfigError            a deployment config that cannot be used (names file and key)
    ├── DecodeError            bytes that are not a request in any supported format
    ├── SchemaError            a request whose columns do not fit the pipeline
    ├── StepError              a step raised, or returned the wrong number of rows
    │   └── StepTimeout        a step ran past its ``timeout_ms``
    ├── OutputError            a result that cannot be encoded or published
    ├── TooLarge               a request over the size limit
    └── Expired                a request consumed after its deadline: never run

Each error carries ``error_type``, the value of the ``x-error-type`` dead-letter header, and
``permanent``: whether retrying the same request could ever succeed.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigError",
    "DecodeError",
    "Expired",
    "OutputError",
    "PipelineError",
    "SchemaError",
    "StepError",
    "StepTimeout",
    "TooLarge",
]


class PipelineError(Exception):
    """A request could not be served; ``error_type`` names the dead-letter category."""

    error_type: ClassVar[str] = "step_error"
    permanent: ClassVar[bool] = False

    def __init__(self, message: str, *, step: str | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.attempts = attempts


class ConfigError(PipelineError):
    """A deployment config that cannot be used; the message names the file and the key."""

    error_type = "config_error"
    permanent = True


class DecodeError(PipelineError):
    """The payload is not a request in any supported format."""

    error_type = "decode_error"
    permanent = True


class SchemaError(PipelineError):
    """The request's columns do not fit the pipeline: names column, expected and actual."""

    error_type = "schema_error"
    permanent = True


class StepError(PipelineError):
    """A step failed on the rows it was given."""

    error_type = "step_error"


class StepTimeout(StepError):  # noqa: N818 - the name is the SPEC's public API
    """A step ran past its per-attempt ``timeout_ms`` and was abandoned."""

    error_type = "step_timeout"


class OutputError(PipelineError):
    """A result cannot be encoded in the request's format."""

    error_type = "output_error"
    permanent = True


class TooLarge(PipelineError):  # noqa: N818 - named after its x-error-type, too_large
    """A request larger than the deployment's request size limit."""

    error_type = "too_large"
    permanent = True


class Expired(PipelineError):  # noqa: N818 - named after its x-error-type, expired
    """A request consumed after its ``x-deadline`` or ``processing.max_request_age_ms``."""

    error_type = "expired"
    permanent = True
