"""structlog, configured once at start-up: key=value on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO, cast

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Configure structlog for the process; ``HEADRACE_LOG_LEVEL`` sets the default level."""
    name = (level or os.environ.get("HEADRACE_LOG_LEVEL", "info")).upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.INFO)
    as_json = json if json is not None else not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _StandardError())),
        cache_logger_on_first_use=True,
    )


class _StandardError:
    """``sys.stderr`` as it is at each write: whoever swaps it later (pytest's capture, a
    daemon's redirect) still gets the logs, and a closed predecessor is never written to."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
