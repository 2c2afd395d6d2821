"""Dead-letter replay rules without a broker: filters, header rewriting, --since, the CLI."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from stream.cli.dlq import add_commands
from stream.dlq import (
    ReplayOptions,
    ReplaySummary,
    failed_at,
    format_age,
    parse_since,
    replay_group,
    replay_headers,
    show_table,
)
from stream.kafka.broker import free_port
from stream.types import Envelope, Partition

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _letter(error_type: str | None = "step_error", *extra: tuple[str, bytes]) -> Envelope:
    headers = [("trace", b"a"), ("X-Request-Id", b"r1")]
    if error_type is not None:
        headers += [
            ("x-error-type", error_type.encode()),
            ("X-Error-Message", b"boom\n  twice"),
            ("x-error-step", b"explode"),
            ("x-attempts", b"3"),
            ("x-source-topic", b"reqs"),
            ("x-source-partition", b"2"),
            ("x-source-offset", b"17"),
            ("x-source-timestamp", b"1714564000000"),
            ("x-consumer-group", b"g"),
            ("x-failed-at", b"2024-05-01T11:57:00.000+00:00"),
        ]
    return Envelope(
        Partition("reqs-dlq", 1),
        42,
        b"key",
        b"value",
        (*headers, ("trace", b"b"), *extra),
        timestamp_ms=int(NOW.timestamp() * 1000),
    )


def test_replay_headers_drop_error_headers_and_name_the_dead_letter() -> None:
    """The request's own headers stay in order (duplicates too); every SPEC §5 header,
    x-original-bytes and an earlier x-replayed-from go, whatever their case."""
    letter = _letter("too_large", ("x-original-bytes", b""), ("X-Replayed-From", b"old:0:1"))

    assert replay_headers(letter) == (
        ("trace", b"a"),
        ("X-Request-Id", b"r1"),
        ("trace", b"b"),
        ("x-replayed-from", b"reqs-dlq:1:42"),
    )


def test_skip_reasons_follow_the_filters() -> None:
    """Type and since filters skip non-matching dead letters; too_large ones are never
    replayable, but count as filtered out when another type is asked for."""
    step, too_large = _letter("step_error"), _letter("too_large", ("x-original-bytes", b""))

    assert ReplayOptions().skip_reason(step) is None
    assert ReplayOptions().skip_reason(too_large) == "too_large, not replayable"
    only_schema = ReplayOptions(error_types=frozenset({"schema_error"}))
    assert only_schema.skip_reason(step) == only_schema.skip_reason(too_large)
    assert only_schema.skip_reason(step) == "not a selected --error-type"
    assert ReplayOptions(error_types=frozenset({"too_large"})).skip_reason(too_large) == (
        "too_large, not replayable"
    )
    assert ReplayOptions(since=NOW - timedelta(minutes=3)).skip_reason(step) is None
    assert ReplayOptions(since=NOW - timedelta(minutes=2)).skip_reason(step) == (
        "failed before --since"
    )


def test_replay_drops_the_old_deadline() -> None:
    """A replayed request leaves its x-deadline behind, whatever its case and error type: the
    caller's deadline has passed, and the worker would only expire it again."""
    for error_type in ("expired", "step_error"):
        letter = _letter(error_type, ("X-Deadline", b"1714564000000"))
        assert [name for name, _ in replay_headers(letter)] == [
            "trace",
            "X-Request-Id",
            "trace",
            "x-replayed-from",
        ]


def test_expired_dead_letters_are_replayed_only_when_asked_for() -> None:
    """A replay without --error-type skips expired dead letters; --error-type expired (alone
    or with others) replays them."""
    expired = _letter("expired", ("x-deadline", b"1714564000000"))

    assert ReplayOptions().skip_reason(expired) == (
        "expired, replayed only with --error-type expired"
    )
    assert ReplayOptions(error_types=frozenset({"expired"})).skip_reason(expired) is None
    both = ReplayOptions(error_types=frozenset({"expired", "step_error"}))
    assert both.skip_reason(expired) is None
    assert both.skip_reason(_letter("step_error")) is None
    only_step = ReplayOptions(error_types=frozenset({"step_error"}))
    assert only_step.skip_reason(expired) == "not a selected --error-type"


def test_replay_help_says_what_happens_to_deadlines_and_expired_letters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`headrace dlq replay --help` tells that x-deadline is dropped and expired is opt-in."""
    with pytest.raises(SystemExit):
        _parse("dlq", "replay", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "x-deadline" in text
    assert "skipped unless --error-type expired" in text


def test_failed_at_falls_back_to_the_record_timestamp() -> None:
    """x-failed-at when present and readable, else the dead letter's own timestamp."""
    assert failed_at(_letter()) == NOW - timedelta(minutes=3)
    assert failed_at(_letter(None)) == NOW
    assert failed_at(_letter(None, ("x-failed-at", b"yesterday"))) == NOW


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("2h", NOW - timedelta(hours=2)),
        (" 1d ", NOW - timedelta(days=1)),
        ("45s", NOW - timedelta(seconds=45)),
        ("2024-04-30T08:00:00Z", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30T10:00:00+02:00", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30T08:00", datetime(2024, 4, 30, 8, tzinfo=UTC)),
        ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    """--since takes a duration before now or an ISO-8601 time, UTC unless it names a zone."""
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "30", "2w", "-1h", "last tuesday", "1.5h"])
def test_parse_since_refuses_what_it_cannot_read(text: str) -> None:
    """Anything else is a ValueError that shows both accepted forms."""
    with pytest.raises(ValueError, match=r"ISO-8601 time .* or a duration like 30m, 2h, 1d"):
        parse_since(text, NOW)


def test_replay_group_is_one_per_set_of_types() -> None:
    """Progress lives in `<group>-dlq-replay`, plus the sorted types when filtered."""
    assert replay_group("ccfraud", []) == "ccfraud-dlq-replay"
    assert replay_group("ccfraud", ["step_timeout", "step_error", "step_error"]) == (
        "ccfraud-dlq-replay-step_error+step_timeout"
    )


def test_format_age() -> None:
    """Ages read in the largest whole unit."""
    assert [format_age(s) for s in (-2, 59, 60, 3599, 7200, 200000)] == [
        "0s ago", "59s ago", "1m ago", "59m ago", "2h ago", "2d ago"
    ]  # fmt: skip


def test_show_table_rows() -> None:
    """One row per dead letter: position, type, message on one line, step, attempts,
    source position, age and key; a header-less record shows placeholders."""
    rows = show_table([_letter(), _letter(None)], NOW).to_pylist()

    assert rows[0] == {
        "partition": 1,
        "offset": 42,
        "error_type": "step_error",
        "message": "boom twice",
        "step": "explode",
        "attempts": "3",
        "source": "reqs:2@17",
        "age": "3m ago",
        "key": "key",
    }
    assert rows[1]["error_type"] == "unknown"
    assert rows[1]["source"] == "?:?@?"


def test_summary_line_counts_by_reason() -> None:
    """The summary names the counts, the reasons, the target topic and the progress group."""
    summary = ReplaySummary("d", "in", "g-dlq-replay", dry_run=False, replayed=[_letter()])
    summary.skipped.update({"too_large, not replayable": 2, "failed before --since": 1})

    assert summary.line() == (
        "replayed 1, skipped 3 (1 failed before --since; 2 too_large, not replayable), "
        "to topic in, from d (progress in consumer group g-dlq-replay)"
    )


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="headrace")
    add_commands(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_command_line_options() -> None:
    """Both commands take the config, repeatable --error-type, --limit; replay also --since
    and --dry-run."""
    types = ["--error-type", "step_error", "step_timeout", "--error-type", "decode_error"]
    args = _parse("dlq", "replay", "c.yaml", *types, "--since", "2h", "--limit", "5", "--dry-run")

    assert args.config == Path("c.yaml")
    assert args.error_types == ["step_error", "step_timeout", "decode_error"]
    assert datetime.now(UTC) - timedelta(hours=2, seconds=5) < args.since
    assert (args.limit, args.dry_run) == (5, True)
    show = _parse("dlq", "show", "c.yaml")
    assert (show.limit, show.error_types) == (50, [])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--error-type", "oops"], "invalid choice: 'oops'"),
        (["--since", "soon"], "ISO-8601"),
        (["--limit", "0"], "at least 1"),
    ],
)
def test_bad_options_exit_2_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad usage exits 2 with argparse's message naming the option and the problem."""
    with pytest.raises(SystemExit) as exited:
        _parse("dlq", "replay", "c.yaml", *argv)

    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _config(tmp_path: Path, bootstrap: str) -> Path:
    path = tmp_path / "c.yaml"
    config = {
        "pipeline": {"name": "p", "steps": [{"check": {"name": "c", "expr": "in.x > 1"}}]},
        "kafka": {"bootstrap_servers": bootstrap},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_unreachable_broker_exits_1_naming_the_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no broker at the address, both commands exit 1 and name it."""
    monkeypatch.setattr("stream.cli.dlq._TIMEOUT_S", 0.5)
    address = f"127.0.0.1:{free_port()}"
    config = str(_config(tmp_path, address))

    for argv in (["replay", config], ["show", config]):
        args = _parse("dlq", *argv)
        assert args.command(args) == 1
        assert f"cannot reach Kafka at {address}" in capsys.readouterr().err


def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that does not load exits 2, naming the file."""
    args = _parse("dlq", "show", str(tmp_path / "missing.yaml"))

    assert args.command(args) == 2
    assert "missing.yaml: no such config file" in capsys.readouterr().err
