"""`headrace dlq replay` and `headrace dlq show` against a real broker."""

from __future__ import annotations

import argparse
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipelines.formats import Format
from stream.cli.dlq import add_commands
from tests.integration.support import Topics
from tests.integration.workers import (
    CCFRAUD_STEPS,
    Fleet,
    Ids,
    Record,
    Request,
    ccfraud_table,
    content_type,
    encode,
    write_config,
)

pytestmark = pytest.mark.integration

Headers = list[tuple[str, bytes]]
OWN: Headers = [("trace", b"t-1"), ("x-request-id", b"req-1"), ("trace", b"\x00\xff")]


def _dlq(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `headrace dlq ARGV...`: exit code, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="headrace")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(["dlq", *argv])
    capsys.readouterr()
    code = args.command(args)
    out, err = capsys.readouterr()
    return code, out, err


def _error_headers(topics: Topics, error_type: str, offset: int, failed: datetime) -> Headers:
    """The SPEC §5 headers the worker adds to a dead letter."""
    headers = [
        ("x-error-type", error_type.encode()),
        ("x-error-message", f"{error_type} in request {offset}\nsecond line".encode()),
        ("x-error-step", b"explode"),
        ("x-attempts", b"3"),
        ("x-source-topic", topics.input.encode()),
        ("x-source-partition", b"0"),
        ("x-source-offset", str(offset).encode()),
        ("x-source-timestamp", b"1700000000000"),
        ("x-consumer-group", topics.group_id.encode()),
        ("x-failed-at", failed.isoformat(timespec="milliseconds").encode()),
    ]
    if error_type == "too_large":
        headers.append(("x-original-bytes", b"2000000"))
    return headers


def _dead_letters(
    topics: Topics, *error_types: str, age: timedelta = timedelta(0), extra: Headers = ()
) -> None:
    """Produce one dead letter per error type straight to the DLQ (key ``k<i>``), in order;
    ``extra`` request headers go after the own ones."""
    failed = datetime.now(UTC) - age
    producer = Producer({"bootstrap.servers": topics.bootstrap})
    for index, error_type in enumerate(error_types):
        value = b"" if error_type == "too_large" else f"value-{index}".encode()
        headers = [*OWN, *extra, *_error_headers(topics, error_type, index, failed)]
        producer.produce(
            topics.dead_letter,
            value,
            key=f"k{index}".encode(),
            headers=headers,
            partition=index % topics.partitions,
            timestamp=int(failed.timestamp() * 1000),
        )
    assert producer.flush(10) == 0


def _read(topics: Topics, topic: str, count: int) -> list[Record]:
    """The records of ``topic`` from the beginning: wait up to 10 s for ``count`` of them,
    then 0.3 s more for any extra."""
    consumer = Consumer(
        {"bootstrap.servers": topics.bootstrap, "group.id": "it-reader", "fetch.wait.max.ms": 10}
    )
    consumer.assign(
        [TopicPartition(topic, index, OFFSET_BEGINNING) for index in range(topics.partitions)]
    )
    records: list[Record] = []
    deadline = time.monotonic() + 10
    while len(records) < count and time.monotonic() < deadline:
        records += [_record(message) for message in consumer.consume(100, 0.1)]
    extra = time.monotonic() + 0.3
    while time.monotonic() < extra:
        records += [_record(message) for message in consumer.consume(100, 0.1)]
    consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def _record(message: Message) -> Record:
    assert message.error() is None, message.error()
    return Record(
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.value() or b"",
        [(k, v or b"") for k, v in message.headers() or []],
    )


def test_replay_republishes_requests_once(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay re-publishes each dead letter with its key, value and own headers, no error
    headers and `x-replayed-from`; too_large ones are reported; a second run replays none."""
    topics = topic_names
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "step_error", "too_large", "schema_error")

    code, out, _ = _dlq(capsys, "replay", config)

    assert code == 0
    assert f"replayed 2, skipped 1 (1 too_large, not replayable), to topic {topics.input}" in out
    assert "note: 1 too_large dead letter(s) not replayable" in out
    assert "0@1 (2000000 bytes)" in out
    replayed = _read(topics, topics.input, 2)
    assert [(r.key, r.value) for r in replayed] == [(b"k0", b"value-0"), (b"k2", b"value-2")]
    for record, offset in zip(replayed, (0, 2), strict=True):
        source = f"{topics.dead_letter}:0:{offset}".encode()
        assert record.headers == [*OWN, ("x-replayed-from", source)]
        assert record.partition == 0  # x-source-partition

    code, out, _ = _dlq(capsys, "replay", config)

    assert code == 0
    assert out.startswith("replayed 0, skipped 0, to topic")
    assert len(_read(topics, topics.input, 2)) == 2


def test_error_type_filter_keeps_its_own_progress(
    new_topics: Callable[..., Topics], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--error-type` replays only that type, in a group of its own, so a later untyped
    replay still replays every dead letter (across partitions)."""
    topics = new_topics(partitions=2)
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "schema_error", "step_error", "step_timeout", "step_error")

    code, out, _ = _dlq(capsys, "replay", config, "--error-type", "step_error")

    assert code == 0, out
    assert "replayed 2, skipped 2 (2 not a selected --error-type)" in out
    assert f"group {topics.group_id}-dlq-replay-step_error)" in out
    assert sorted(r.key for r in _read(topics, topics.input, 2)) == [b"k1", b"k3"]
    assert _dlq(capsys, "replay", config, "--error-type", "step_error")[1].startswith("replayed 0")

    code, out, _ = _dlq(capsys, "replay", config)

    assert code == 0
    assert "replayed 4, skipped 0" in out
    assert sorted(r.key for r in _read(topics, topics.input, 6)) == [
        b"k0", b"k1", b"k1", b"k2", b"k3", b"k3"
    ]  # fmt: skip


def test_expired_letters_wait_for_their_type_and_replay_without_a_deadline(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An untyped replay skips expired dead letters; `--error-type expired` replays them; every
    replayed request leaves its old x-deadline behind."""
    topics = topic_names
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "expired", "step_error", extra=[("x-deadline", b"1700000000000")])

    code, out, _ = _dlq(capsys, "replay", config)

    assert code == 0, out
    assert "replayed 1, skipped 1 (1 expired, replayed only with --error-type expired)" in out
    (served,) = _read(topics, topics.input, 1)
    assert served.key == b"k1"
    assert served.headers == [*OWN, ("x-replayed-from", f"{topics.dead_letter}:0:1".encode())]

    code, out, _ = _dlq(capsys, "replay", config, "--error-type", "expired")

    assert code == 0, out
    assert "replayed 1, skipped 1 (1 not a selected --error-type)" in out
    replayed = _read(topics, topics.input, 2)
    assert [r.key for r in replayed] == [b"k1", b"k0"]
    assert replayed[1].headers == [
        *OWN,
        ("x-replayed-from", f"{topics.dead_letter}:0:0".encode()),
    ]


def test_limit_then_next_run_replays_the_rest(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--limit 2` replays the first two and commits exactly past them; the next run replays
    the rest (skipped ones in between included in the progress)."""
    topics = topic_names
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "step_error", "too_large", "step_error", "step_error", "schema_error")

    code, out, _ = _dlq(capsys, "replay", config, "--limit", "2")

    assert code == 0
    assert "replayed 2, skipped 1" in out
    assert [r.key for r in _read(topics, topics.input, 2)] == [b"k0", b"k2"]
    group = Consumer(
        {"bootstrap.servers": topics.bootstrap, "group.id": f"{topics.group_id}-dlq-replay"}
    )
    assert group.committed([TopicPartition(topics.dead_letter, 0)], timeout=10)[0].offset == 3
    group.close()

    code, out, _ = _dlq(capsys, "replay", config)

    assert code == 0
    assert "replayed 2, skipped 0" in out
    assert [r.key for r in _read(topics, topics.input, 4)] == [b"k0", b"k2", b"k3", b"k4"]


def test_dry_run_and_since(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--dry-run` prints the table of what would go and produces and commits nothing;
    `--since` leaves out dead letters that failed before it."""
    topics = topic_names
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "decode_error", "step_error", age=timedelta(days=2))
    _dead_letters(topics, "schema_error")  # offset 2, key k0, now

    code, out, _ = _dlq(capsys, "replay", config, "--dry-run")

    assert code == 0
    assert "dry run: would replay 3, skip 0" in out
    assert "decode_error" in out and "2d ago" in out and "schema_error" in out
    assert _read(topics, topics.input, 0) == []

    code, out, _ = _dlq(capsys, "replay", config, "--since", "1d")

    assert code == 0
    assert "replayed 1, skipped 2 (2 failed before --since)" in out
    since = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    assert _dlq(capsys, "replay", config, "--since", since)[1].startswith("replayed 0, skipped 0")
    [record] = _read(topics, topics.input, 1)
    assert record.header("x-replayed-from") == f"{topics.dead_letter}:0:2"


def test_show_lists_dead_letters_newest_last(
    new_topics: Callable[..., Topics], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`show` prints type, message, step, attempts, source and age per dead letter, newest
    last, filtered by `--error-type`, and commits nothing."""
    topics = new_topics(partitions=2)
    config = str(write_config(tmp_path, topics))
    _dead_letters(topics, "schema_error", "too_large")
    _dead_letters(topics, "decode_error", age=timedelta(hours=3))

    code, out, _ = _dlq(capsys, "show", config)

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "partition", "offset", "error_type", "message", "step", "attempts", "source", "age", "key"
    ]  # fmt: skip
    assert [line.split()[2] for line in lines[2:5]] == ["decode_error", "schema_error", "too_large"]
    assert "3h ago" in lines[2]
    assert "schema_error in request 0 second line" in lines[3]
    assert f"explode  3         {topics.input}:0@0" in lines[3]
    assert lines[-1] == f"3 of 3 dead letters in {topics.dead_letter}, newest last"

    code, out, _ = _dlq(capsys, "show", config, "--error-type", "too_large", "--limit", "5")

    assert code == 0
    assert "1 of 1 dead letters" in out and "schema_error" not in out
    assert "replayed 2" in _dlq(capsys, "replay", config)[1]  # show committed nothing


def test_missing_dlq_topic_is_named_and_not_created(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead-letter topic that does not exist is an error (exit 1) naming it, and neither
    command creates it."""
    topics = topic_names
    config = str(write_config(tmp_path, topics, kafka={"dead_letter_topic": "it-no-such-dlq"}))

    for command in ("replay", "show"):
        code, _, err = _dlq(capsys, command, config)
        assert code == 1
        assert "topic 'it-no-such-dlq' (kafka.dead_letter_topic) does not exist on " in err
        assert topics.bootstrap in err

    listed = AdminClient({"bootstrap.servers": topics.bootstrap}).list_topics(timeout=10)
    assert "it-no-such-dlq" not in listed.topics


def test_unacknowledged_replay_stops_progress_before_it(
    topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replay the producer refuses exits 1 naming the dead letter; progress is committed up
    to it, so the next run (here with a larger limit) replays it and what followed."""
    topics = topic_names
    _dead_letters(topics, "step_error", "step_error", "step_error")
    producer = Producer({"bootstrap.servers": topics.bootstrap})
    producer.produce(
        topics.dead_letter,
        b"x" * 100_000,
        key=b"big",
        headers=_error_headers(topics, "step_error", 3, datetime.now(UTC)),
    )
    assert producer.flush(10) == 0
    _dead_letters(topics, "schema_error")  # offset 4
    small = str(write_config(tmp_path, topics, kafka={"max_message_bytes": 1024}))

    code, _, err = _dlq(capsys, "replay", small)

    assert code == 1
    assert f"not acknowledged by the broker, first {topics.dead_letter}:0:3" in err
    assert "next run replays them again" in err
    assert [r.key for r in _read(topics, topics.input, 3)] == [b"k0", b"k1", b"k2"]

    code, out, _ = _dlq(capsys, "replay", str(write_config(tmp_path, topics)))

    assert code == 0
    assert "replayed 2, skipped 0" in out
    assert [r.key for r in _read(topics, topics.input, 5)] == [b"k0", b"k1", b"k2", b"big", b"k0"]


FLAKY = textwrap.dedent(
    """
    from pathlib import Path

    FLAG = Path({flag!r})


    def flaky(table, context):
        if FLAG.exists():
            raise RuntimeError("flag file present")
        return table.select(["dense_1"])
    """
)


def test_replayed_requests_are_served_once_the_fault_is_gone(
    fleet: Fleet, topic_names: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests dead-lettered while a step failed are served after the fault is fixed and
    they are replayed: one result each, carrying `x-replayed-from`."""
    topics = topic_names
    flag = tmp_path / "broken"
    flag.touch()
    steps = [
        CCFRAUD_STEPS[0],
        {"python": {"name": "flaky", "function": "flaky:flaky"}, "retries": 0},
        CCFRAUD_STEPS[1],
    ]
    config = write_config(
        tmp_path, topics, steps=steps, modules={"flaky": FLAKY.format(flag=str(flag))}
    )
    fleet.start(config)
    ids = Ids()
    requests = [
        Request(encode(ccfraud_table(ids.take(2)), Format.ARROW_STREAM), f"r{i}".encode(),
                content_type(Format.ARROW_STREAM))
        for i in range(3)
    ]  # fmt: skip
    fleet.requests(topics).send(requests)
    outputs = fleet.outputs(topics)
    outputs.wait_for(dead_letters=3, timeout=30)
    assert {r.header("x-error-type") for r in outputs.dead_letters} == {"step_error"}
    flag.unlink()

    code, out, _ = _dlq(capsys, "replay", str(config))

    assert code == 0
    assert "replayed 3, skipped 0" in out
    outputs.wait_for(results=3, timeout=30)
    outputs.settle()
    assert sorted(r.key for r in outputs.results) == [b"r0", b"r1", b"r2"]
    assert {r.header("x-replayed-from") for r in outputs.results} == {
        f"{topics.dead_letter}:0:{offset}" for offset in range(3)
    }
    assert len(outputs.dead_letters) == 3
