"""``headrace dlq replay`` and ``headrace dlq show``: the command line of :mod:`stream.dlq`.

The commands import :mod:`stream.dlq` (and so Kafka) when they run, not when ``headrace``
builds its parser.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipelines.config import load_settings
from pipelines.errors import ConfigError
from stream.cli.main import positive
from stream.errors import StreamError
from stream.headers import ERROR_TYPES, ORIGINAL_BYTES

__all__ = ["add_commands"]

_TIMEOUT_S = 10.0  # each broker round trip of a command (metadata, offsets, commit)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dlq replay`` and ``dlq show`` on the ``headrace`` parser's subcommands."""
    dlq = commands.add_parser("dlq", help="inspect and replay dead letters")
    actions = dlq.add_subparsers(required=True, metavar="ACTION")
    replay_parser = actions.add_parser(
        "replay",
        help="re-publish dead letters to the input topic, once per consumer group",
        description=(
            "Re-publish dead letters to the input topic, without their x-error-* headers and "
            "their x-deadline (a replay is a new request: the caller's deadline has passed), "
            "with x-replayed-from naming the dead letter. expired dead letters (requests "
            "consumed after their deadline, never run) are skipped unless --error-type expired "
            "names them; too_large ones keep no value and are never replayed."
        ),
    )
    replay_parser.add_argument("config", type=Path)
    _error_type_option(replay_parser)
    replay_parser.add_argument(
        "--since",
        type=_since,
        default=None,
        metavar="WHEN",
        help="only dead letters that failed at or after WHEN: ISO-8601 time, or 30m, 2h, 1d ago",
    )
    replay_parser.add_argument(
        "--limit",
        type=positive,
        default=None,
        metavar="N",
        help="replay at most N; the next run goes on from there",
    )
    replay_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be replayed; produce and commit nothing",
    )
    replay_parser.set_defaults(command=_replay_command)

    show = actions.add_parser("show", help="list dead letters as a table (commits nothing)")
    show.add_argument("config", type=Path)
    show.add_argument(
        "--limit", type=positive, default=50, metavar="N", help="show the N newest (default 50)"
    )
    _error_type_option(show)
    show.set_defaults(command=_show_command)


def _error_type_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--error-type",
        dest="error_types",
        action="extend",
        nargs="+",
        choices=ERROR_TYPES,
        default=[],
        metavar="T",
        help=f"only these x-error-type values: {', '.join(ERROR_TYPES)}",
    )


def _since(text: str) -> datetime:
    from stream.dlq import parse_since

    try:
        return parse_since(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replay_command(args: argparse.Namespace) -> int:
    from stream.cli.display import render_table
    from stream.dlq import ReplayOptions, replay, show_table, text_of

    options = ReplayOptions(frozenset(args.error_types), args.since, args.limit, args.dry_run)
    try:
        summary = replay(load_settings(args.config), options, timeout=_TIMEOUT_S)
    except ConfigError as exc:
        return _fail(exc, 2)
    except StreamError as exc:  # DlqError, KafkaUnavailable
        return _fail(exc, 1)
    if options.dry_run and summary.replayed:
        table = show_table(summary.replayed, datetime.now(UTC))
        print(render_table(table, max_rows=50))
    print(summary.line())
    if summary.too_large:
        where = ", ".join(
            f"{letter.partition.index}@{letter.offset} ({text_of(letter.header(ORIGINAL_BYTES))} "
            "bytes)"
            for letter in summary.too_large[:5]
        )
        more = f" and {len(summary.too_large) - 5} more" if len(summary.too_large) > 5 else ""
        print(
            f"note: {len(summary.too_large)} too_large dead letter(s) not replayable: they keep "
            f"the request's size (x-original-bytes), not its bytes; re-send those requests from "
            f"their source. In {summary.source}: {where}{more}"
        )
    return 0


def _show_command(args: argparse.Namespace) -> int:
    from stream.cli.display import render_table
    from stream.dlq import read_dead_letters, show_table

    try:
        settings = load_settings(args.config)
        types = frozenset(args.error_types)
        letters, count = read_dead_letters(
            settings, error_types=types, limit=args.limit, timeout=_TIMEOUT_S
        )
    except ConfigError as exc:
        return _fail(exc, 2)
    except StreamError as exc:
        return _fail(exc, 1)
    topic = settings.kafka.dead_letter_topic
    if not letters:
        print(
            f"no dead letters in {topic}"
            + (f" of type {', '.join(sorted(types))}" if types else "")
        )
        return 0
    print(render_table(show_table(letters, datetime.now(UTC)), max_rows=len(letters)))
    print(f"{len(letters)} of {count} dead letters in {topic}, newest last")
    return 0


def _fail(exc: Exception, code: int) -> int:
    print(f"headrace: {exc}", file=sys.stderr)
    return code
