"""Dead letters back into service: ``headrace dlq replay`` and ``headrace dlq show``.

``replay`` re-publishes each matching dead letter to the input topic, the error headers and
``x-deadline`` removed and ``x-replayed-from`` added, keeping its progress in a consumer group
of its own; ``expired`` dead letters only when asked for by type (see
:mod:`stream.dlq._replay`). ``show`` reads from the beginning and commits nothing
(:mod:`stream.dlq._show`). Both stop reading at the end offsets of their first fetch
(:mod:`stream.dlq._common`).
Its command line is :mod:`stream.cli.dlq`.
"""

from __future__ import annotations

from stream.dlq._common import failed_at, text_of
from stream.dlq._replay import (
    ReplayOptions,
    ReplaySummary,
    parse_since,
    replay,
    replay_group,
    replay_headers,
)
from stream.dlq._show import format_age, read_dead_letters, show_table
from stream.errors import DlqError

__all__ = [
    "DlqError",
    "ReplayOptions",
    "ReplaySummary",
    "failed_at",
    "format_age",
    "parse_since",
    "read_dead_letters",
    "replay",
    "replay_group",
    "replay_headers",
    "show_table",
    "text_of",
]
