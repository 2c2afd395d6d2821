"""``python -m benchmarks.chaos``: crash, freeze and restart workers under steady load, then
count what was lost.

A fresh embedded broker on a free port, topics of several partitions, two or more
``headrace run`` workers in one group (slot ``i`` runs with ``HEADRACE_REPLICA_INDEX=i``, so a
restarted slot keeps its transactional id), and a producer thread sending requests with unique
ids at a steady rate, bounded in count and time. Meanwhile a worker is SIGKILLed and started
again, over and over, and once one is frozen (SIGSTOP) past the session timeout and then let go
on (SIGCONT). A worker that exits by itself is started again too, as a supervisor would, and
counted. When the load ends the workers drain, the output and dead-letter topics are read back
(read_committed under ``--guarantee exactly_once``), the workers get SIGTERM, and it reports:

- requests sent, and requests lost: committed by the workers' group, yet with no result and
  no dead letter; and requests not served: not committed when the harness gave up (the drain
  lasts while answers keep coming). Both must be 0; the exit status is 1 otherwise;
- repeats: requests with more than one result (a crash may repeat a request, never lose one);
- order: whether in every partition the first results came in input order.

On the embedded broker (Tansu) aborted transactional records stay visible to read_committed
readers (docs/tansu.md), so under exactly_once the repeats of a crash show there; Apache Kafka
filters them. Tansu's fetches also slow down with the number of record batches in a partition
(reading 500 records took 0.5 s after 8,000 one-record batches, 4.5 s after 12,000), so the load
is sent in batches (``linger.ms`` 50) and the workers serve micro-batches of up to 50 ms.
``--quick`` is a shorter run (about a minute); a full one takes about 5.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from benchmarks._kafka import wait_stable
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.worker.processes import WorkerProcess, stop_on_sigterm

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ccfraud.yaml"
SESSION_TIMEOUT_S = 6.0  # the worker's session.timeout.ms (stream.kafka.config)
_CONTENT_TYPE: tuple[str, str | bytes | None] = (
    "content-type",
    b"application/json; format=pandas-records",
)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard: the load, the disruptions, and the time left to drain."""

    seconds: float  # of load
    rate: int  # requests per second
    kills: int  # SIGKILL + restart, spread over the load
    drain_s: float  # after the load, for every request to be answered


QUICK = Plan(seconds=36, rate=1000, kills=3, drain_s=120)
FULL = Plan(seconds=150, rate=1000, kills=8, drain_s=120)
NAMES = ("chaos-in", "chaos-out", "chaos-dlq")
GROUP = "chaos"
_STALLED_S = 30.0  # a drain with no new answer for this long has stalled


class Slot:
    """One worker slot: a ``headrace run`` process, started again after each kill or exit."""

    def __init__(
        self, index: int, bootstrap: str, env: dict[str, str], log_dir: Path, log_level: str
    ) -> None:
        self.index = index
        self.exits: list[int] = []  # exit codes of the times it stopped by itself
        self._process = WorkerProcess(
            CONFIG,
            bootstrap=bootstrap,
            log_path=log_dir / f"worker-{index}.log",
            log_level=log_level,
            overrides=env | {"HEADRACE_REPLICA_INDEX": str(index)},
        )
        self._process.start()

    def kill_and_restart(self) -> None:
        self._process.kill()
        self._process.start()

    def freeze(self, seconds: float) -> None:
        pid = self._process.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(pid, signal.SIGCONT)

    def supervise(self, *, restart: bool = True) -> None:
        """Keep the exit code of a worker that exited by itself; start it again."""
        if not self._process.running():
            self.exits.append(self._process.returncode or 0)
            print(f"  worker {self.index} exited by itself ({self.exits[-1]}):")
            print("    " + self._process.log_tail(2).replace("\n", "\n    "))
            if restart:
                self._process.start()

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None when it had exited by itself)."""
        self.supervise(restart=False)
        return self._process.stop(timeout=45) if self._process.running() else None


class Load:
    """A producer thread: ``count`` requests with unique ids at ``rate`` per second."""

    def __init__(self, bootstrap: str, topic: str, count: int, rate: int) -> None:
        self.sent: set[tuple[int, int]] = set()  # (partition, offset) the broker stored
        self.refused = 0
        self._topic, self._count, self._rate = topic, count, rate
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 50, "enable.idempotence": True}
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        started = time.monotonic()
        for number in range(self._count):
            delay = started + number / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            row = {"tensor": [round((number % 97) / 50, 2)] * 29, "id": number}
            headers = [_CONTENT_TYPE, ("x-request-id", f"chaos-{number}")]
            while True:
                try:
                    self._producer.produce(
                        self._topic,
                        orjson.dumps([row]),
                        f"k{number % 97}".encode(),
                        headers=headers,
                        on_delivery=self._delivered,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self._producer.poll(0)
        self._producer.flush(60)

    def _delivered(self, error: object, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if error is None and partition is not None and offset is not None:
            self.sent.add((partition, offset))
        else:
            self.refused += 1


@dataclass
class Answers:
    """What the output and dead-letter topics hold, by the request they answer."""

    results: Counter[tuple[int, int]] = field(default_factory=Counter)
    dead_letters: Counter[tuple[int, int]] = field(default_factory=Counter)
    out_of_order: Counter[int] = field(default_factory=Counter)  # by input partition
    _last_first: dict[int, int] = field(default_factory=dict)

    def add(self, message: Message, output: str) -> None:
        found = dict(message.headers() or [])
        source = (_number(found["x-source-partition"]), _number(found["x-source-offset"]))
        if message.topic() != output:
            self.dead_letters[source] += 1
            return
        first = source not in self.results
        self.results[source] += 1
        if first:  # results of input partition p are in output partition p, in order
            partition, offset = source
            if offset < self._last_first.get(partition, -1):
                self.out_of_order[partition] += 1
            self._last_first[partition] = max(offset, self._last_first.get(partition, -1))

    def answered(self) -> set[tuple[int, int]]:
        return set(self.results) | set(self.dead_letters)


def _number(value: object) -> int:
    return int(value.decode() if isinstance(value, bytes) else str(value))


class Reader:
    """Reads the output and dead-letter topics from the beginning, without a group."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...], partitions: int, level: str):
        self.answers = Answers()
        self._output = topics[0]
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
                "isolation.level": level,
                "fetch.wait.max.ms": 10,
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign(
            [TopicPartition(t, i, OFFSET_BEGINNING) for t in topics for i in range(partitions)]
        )

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for message in self._consumer.consume(10_000, 0.1):
                if message.error() is None:
                    self.answers.add(message, self._output)

    def close(self) -> None:
        self._consumer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a shorter run: about a minute")
    parser.add_argument(
        "--guarantee", choices=("at_least_once", "exactly_once"), default="at_least_once"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker slots (default 2)")
    parser.add_argument("--partitions", type=int, default=6, help="input partitions (default 6)")
    parser.add_argument("--verbose", action="store_true", help="workers log at info level")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-chaos-"))
    started = time.monotonic()
    with stop_on_sigterm(), EmbeddedBroker(free_port(), log_path=log_dir / "broker.log") as broker:
        print(
            f"chaos ({'quick' if args.quick else 'full'}, {args.guarantee}): {args.workers} "
            f"workers, {args.partitions} partitions, {plan.rate} requests/s for "
            f"{plan.seconds:g} s, {plan.kills} SIGKILLs and 1 SIGSTOP; logs in {log_dir}/",
            flush=True,
        )
        lost = _run(broker.address, plan, args, log_dir)
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if lost else 0


def _run(bootstrap: str, plan: Plan, args: argparse.Namespace, log_dir: Path) -> int:
    """The whole run; how many requests were lost or never served."""
    guarantee, partitions = str(args.guarantee), int(args.partitions)
    ensure_topics(bootstrap, dict.fromkeys(NAMES, partitions))
    env = {
        "HEADRACE_KAFKA__INPUT_TOPIC": NAMES[0],
        "HEADRACE_KAFKA__OUTPUT_TOPIC": NAMES[1],
        "HEADRACE_KAFKA__DEAD_LETTER_TOPIC": NAMES[2],
        "HEADRACE_KAFKA__GROUP_ID": GROUP,
        "HEADRACE_KAFKA__PARTITIONS": str(partitions),
        "HEADRACE_PROCESSING__GUARANTEE": guarantee,
        "HEADRACE_BATCHING__MAX_WAIT_MS": "50",  # fewer, larger record batches for Tansu
    }
    slots = [
        Slot(index, bootstrap, env, log_dir, "info" if args.verbose else "warning")
        for index in range(args.workers)
    ]
    if wait_stable(bootstrap, GROUP, timeout=60) is None:
        raise RuntimeError("the workers got no partitions within 60 s")
    time.sleep(SESSION_TIMEOUT_S)  # let the group settle: every worker joined
    level = "read_committed" if guarantee == "exactly_once" else "read_uncommitted"
    reader = Reader(bootstrap, NAMES[1:], partitions, level)
    load = Load(bootstrap, NAMES[0], int(plan.seconds * plan.rate), plan.rate)
    _disrupt(slots, plan, reader)
    load.join(plan.seconds + 60)
    drained = _drain(slots, reader, load, plan.drain_s)
    codes = [slot.stop() for slot in slots]
    reader.poll(2.0)
    reader.close()
    answers = reader.answers
    missing = load.sent - answers.answered()
    committed = _committed(bootstrap, partitions)
    lost = {(p, o) for p, o in missing if o < committed.get(p, 0)}
    repeats = sorted(source for source, count in answers.results.items() if count > 1)
    exits = [code for slot in slots for code in slot.exits]
    print(f"requests sent:         {len(load.sent):,} (refused by the broker: {load.refused})")
    print(f"requests lost:         {len(lost):,}  (committed, with no result and no dead letter)")
    print(f"requests not served:   {len(missing - lost):,}  (never committed; {drained})")
    print(f"repeats:               {len(repeats):,}  (requests with more than one result)")
    for partition, offsets in _runs(repeats):
        print(f"  partition {partition}: offsets {offsets}")
    print(f"dead letters:          {sum(answers.dead_letters.values()):,}")
    print(f"first results in order: {_order(answers, partitions)}")
    print(f"workers exiting by themselves: {len(exits)} {exits or ''}")
    print(f"exit codes on the final SIGTERM: {codes}")
    if missing and guarantee == "exactly_once":
        _explain(bootstrap, partitions, missing)
    return len(missing)


def _disrupt(slots: list[Slot], plan: Plan, reader: Reader) -> None:
    """SIGKILL and restart slots in turn; halfway, freeze one past the session timeout."""
    events = plan.kills + 1
    freeze_at = events // 2
    started = time.monotonic()
    for number in range(events):
        due = started + plan.seconds * (number + 1) / (events + 1)
        while time.monotonic() < due:
            reader.poll(0.2)
            for slot in slots:
                slot.supervise()
        slot = slots[number % len(slots)]
        at = time.monotonic() - started
        if number == freeze_at:
            seconds = SESSION_TIMEOUT_S + 4
            print(f"  {at:5.1f} s: SIGSTOP worker {slot.index} for {seconds:g} s", flush=True)
            slot.freeze(seconds)
        else:
            print(f"  {at:5.1f} s: SIGKILL worker {slot.index}, start it again", flush=True)
            slot.kill_and_restart()


def _drain(slots: list[Slot], reader: Reader, load: Load, seconds: float) -> str:
    """Read until every stored request is answered, for at most ``seconds`` and while answers
    keep coming; how it ended."""
    started = time.monotonic()
    progress_at, answered = started, 0
    while time.monotonic() - started < seconds:
        reader.poll(0.5)
        for slot in slots:
            slot.supervise()
        now = len(load.sent & reader.answers.answered())
        if now == len(load.sent):
            return f"all answered after a drain of {time.monotonic() - started:.0f} s"
        if now > answered:
            progress_at, answered = time.monotonic(), now
        elif time.monotonic() - progress_at > _STALLED_S:
            return f"nothing more answered for {_STALLED_S:g} s"
    return f"the drain ran out of its {seconds:g} s"


def _committed(bootstrap: str, partitions: int) -> dict[int, int]:
    """The workers' group's committed offsets per input partition (never joins the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    try:
        wanted = [TopicPartition(NAMES[0], index) for index in range(partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(wanted, timeout=10)}
    finally:
        consumer.close()


def _runs(sources: list[tuple[int, int]]) -> list[tuple[int, str]]:
    """Sorted (partition, offset) pairs as ranges of offsets per partition: "3-9, 12"."""
    runs: dict[int, list[list[int]]] = {}
    for partition, offset in sources:
        ranges = runs.setdefault(partition, [])
        if ranges and ranges[-1][1] == offset - 1:
            ranges[-1][1] = offset
        else:
            ranges.append([offset, offset])
    return [
        (p, ", ".join(f"{a}-{b}" if a < b else str(a) for a, b in ranges))
        for p, ranges in sorted(runs.items())
    ]


def _order(answers: Answers, partitions: int) -> str:
    if not answers.out_of_order:
        return f"yes, in all {partitions} partitions"
    late = sorted(answers.out_of_order.items())
    return "NO: " + ", ".join(f"partition {p}: {n} late" for p, n in late)


def _explain(bootstrap: str, partitions: int, missing: set[tuple[int, int]]) -> None:
    """Under exactly_once: are the missing ones there for a read_uncommitted reader?"""
    reader = Reader(bootstrap, NAMES[1:], partitions, "read_uncommitted")
    reader.poll(5.0)
    reader.close()
    there = len(missing & reader.answers.answered())
    print(
        f"of the {len(missing):,} unanswered: {there:,} have a result that a read_uncommitted "
        "reader sees (an open or aborted transaction holds it back)"
    )


if __name__ == "__main__":
    sys.exit(main())
