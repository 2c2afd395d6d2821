"""``python -m benchmarks.rejoin``: how fast a SIGKILLed worker is back, with and without static
group membership (``kafka.instance_id``), and whether the other worker is disturbed.

A fresh embedded broker on a free port; for each mode its own topics (several partitions) and
group, two ``headrace run`` workers (slots 0 and 1, ``HEADRACE_REPLICA_INDEX``), and a steady
keyed load. Once the group is stable, worker 1 is SIGKILLed and started again in its slot a
second later, as a supervisor restarting a pod would. From the workers' logs and the results:

- restart -> assigned: until the restarted worker logs its partitions assigned;
- restart -> first result: until it logs its first served batch;
- outage: from the kill until every partition it held has a result stamped after the kill;
- the other worker's rebalances after the kill: its "partitions revoked" / "assigned" log lines
  (with static membership on Apache Kafka it sees none: the restarted member takes its
  partitions back within ``session.timeout.ms``);
- unanswered: requests the broker stored that have no result once the load has drained.

Modes: ``dynamic`` (no instance id) and ``static`` (``HEADRACE_KAFKA__INSTANCE_ID``);
``--strategy`` picks ``partition.assignment.strategy``. Bounded: about a minute per mode.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import threading
import time
import uuid
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
RESTART_AFTER_S = 1.0  # kill -> start again, well inside the session timeout
BACK_WITHIN_S = 60.0  # give up on the restarted worker after this long
_CONTENT_TYPE: tuple[str, str | bytes | None] = (
    "content-type",
    b"application/json; format=pandas-records",
)


@dataclass(frozen=True, slots=True)
class Event:
    """A line of a worker's JSON log: when (epoch seconds), what, and the partitions named."""

    at: float
    event: str
    partitions: frozenset[int]


def events(log: Path) -> list[Event]:
    """The rebalance and batch lines of a worker's log, in order."""
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        name = str(record.get("event", ""))
        if not name.startswith(("partitions ", "batch served")):
            continue
        stamp = datetime.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00"))
        named = frozenset(
            int(p.rsplit("[", 1)[1].rstrip("]")) for p in record.get("partitions", [])
        )
        found.append(Event(stamp.timestamp(), name.split(";", maxsplit=1)[0], named))
    return found


def held_at(log: Path, moment: float) -> frozenset[int]:
    """The partitions a worker held at ``moment``, replaying its log (eager or cooperative)."""
    held: set[int] = set()
    for event in events(log):
        if event.at > moment:
            break
        if event.event == "partitions assigned":
            held |= event.partitions
        elif event.event == "partitions revoked":
            held -= event.partitions
    return frozenset(held)


class Load:
    """A producer thread: keyed one-row requests at ``rate`` per second until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: int) -> None:
        self.sent: set[tuple[int, int]] = set()
        self._topic, self._rate = topic, rate
        self._stop = threading.Event()
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        started, number = time.monotonic(), 0
        while not self._stop.is_set():
            delay = started + number / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            row = {"tensor": [round((number % 97) / 50, 2)] * 29, "id": number}
            self._producer.produce(
                self._topic,
                orjson.dumps([row]),
                f"k{number % 48}".encode(),
                headers=[_CONTENT_TYPE],
                on_delivery=self._delivered,
            )
            self._producer.poll(0)
            number += 1
        self._producer.flush(30)

    def _delivered(self, error: object, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        if error is None and partition is not None and offset is not None:
            self.sent.add((partition, offset))


@dataclass
class Results:
    """What the output topic holds: per request, the CreateTime of its first result."""

    stamped: dict[tuple[int, int], float] = field(default_factory=dict)

    def first_after(self, partition: int, moment: float) -> float | None:
        """When the first result of ``partition`` stamped after ``moment`` was produced."""
        later = [at for (p, _), at in self.stamped.items() if p == partition and at > moment]
        return min(later) if later else None


class Reader:
    """Reads the output topic from the beginning in a thread, without a group."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.results = Results()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"rejoin-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [TopicPartition(topic, i, OFFSET_BEGINNING) for i in range(partitions)]
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(10_000, 0.1):
                if message.error() is not None:
                    continue
                found = dict(message.headers() or [])
                source = (_number(found["x-source-partition"]), _number(found["x-source-offset"]))
                self.results.stamped.setdefault(source, message.timestamp()[1] / 1000)


def _number(value: object) -> int:
    return int(value.decode() if isinstance(value, bytes) else str(value))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One mode's figures (seconds; None: did not happen within the run)."""

    mode: str
    assigned_s: float | None
    first_result_s: float | None
    outage_s: float | None
    killed_held: frozenset[int]
    other_revoked: list[frozenset[int]]
    other_assigned: list[frozenset[int]]
    unanswered: int


def run_mode(bootstrap: str, mode: str, args: argparse.Namespace, log_dir: Path) -> Outcome:
    """Two workers, a steady load, SIGKILL worker 1 and start it again; what followed."""
    names = [f"rejoin-{mode}-{kind}" for kind in ("in", "out", "dlq")]
    group = f"rejoin-{mode}"
    ensure_topics(bootstrap, dict.fromkeys(names, args.partitions))
    env = {
        "HEADRACE_KAFKA__INPUT_TOPIC": names[0],
        "HEADRACE_KAFKA__OUTPUT_TOPIC": names[1],
        "HEADRACE_KAFKA__DEAD_LETTER_TOPIC": names[2],
        "HEADRACE_KAFKA__GROUP_ID": group,
        "HEADRACE_KAFKA__PARTITIONS": str(args.partitions),
        "HEADRACE_KAFKA__PROPERTIES": json.dumps({"partition.assignment.strategy": args.strategy}),
        "HEADRACE_BATCHING__MAX_WAIT_MS": "20",
    }
    if mode == "static":
        env["HEADRACE_KAFKA__INSTANCE_ID"] = "rejoin"  # slot i: group.instance.id rejoin-i
    workers = [
        WorkerProcess(
            CONFIG,
            bootstrap=bootstrap,
            log_path=log_dir / f"{mode}-worker-{index}.log",
            overrides=env | {"HEADRACE_REPLICA_INDEX": str(index)},
        ).start()
        for index in range(2)
    ]
    try:
        return _disrupt(bootstrap, mode, args, names, workers)
    finally:
        for worker in workers:
            worker.stop(timeout=30)


def _disrupt(
    bootstrap: str,
    mode: str,
    args: argparse.Namespace,
    names: list[str],
    workers: list[WorkerProcess],
) -> Outcome:
    if wait_stable(bootstrap, f"rejoin-{mode}", timeout=60) is None:
        raise RuntimeError(f"{mode}: the workers got no partitions within 60 s")
    time.sleep(SESSION_TIMEOUT_S)  # every member joined, the group settled
    reader = Reader(bootstrap, names[1], args.partitions)
    load = Load(bootstrap, names[0], args.rate)
    time.sleep(4.0)
    other, killed = workers
    killed_at = time.time()
    killed_held = held_at(killed.log_path, killed_at)
    killed.kill()
    time.sleep(RESTART_AFTER_S)
    restarted_at = time.time()
    killed.start()
    assigned_at = _wait_for(killed.log_path, "partitions assigned", restarted_at)
    first_at = _wait_for(killed.log_path, "batch served", restarted_at)
    time.sleep(3.0)
    load.stop()
    _drain(reader, load, timeout=60)
    reader.stop()
    after = [e for e in events(other.log_path) if e.at > killed_at]
    back = [reader.results.first_after(p, killed_at) for p in sorted(killed_held)]
    served_again = [at for at in back if at is not None]
    outage = max(served_again) - killed_at if back and len(served_again) == len(back) else None
    return Outcome(
        mode=mode,
        assigned_s=None if assigned_at is None else assigned_at - restarted_at,
        first_result_s=None if first_at is None else first_at - restarted_at,
        outage_s=outage,
        killed_held=killed_held,
        other_revoked=[e.partitions for e in after if e.event == "partitions revoked"],
        other_assigned=[e.partitions for e in after if e.event == "partitions assigned"],
        unanswered=len(load.sent - reader.results.stamped.keys()),
    )


def _wait_for(log: Path, event: str, since: float) -> float | None:
    """When ``log`` first has ``event`` (with partitions, for an assignment) after ``since``."""
    deadline = time.monotonic() + BACK_WITHIN_S
    while time.monotonic() < deadline:
        for found in events(log):
            wanted = found.event == event and (event == "batch served" or found.partitions)
            if found.at > since and wanted:
                return found.at
        time.sleep(0.1)
    return None


def _drain(reader: Reader, load: Load, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not load.sent <= reader.results.stamped.keys():
        time.sleep(0.2)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _sets(found: list[frozenset[int]]) -> str:
    return ", ".join(str(sorted(s)) for s in found) or "none"


def report(outcome: Outcome) -> None:
    print(f"{outcome.mode}:")
    print(f"  restart -> partitions assigned: {_seconds(outcome.assigned_s)}")
    print(f"  restart -> first result:        {_seconds(outcome.first_result_s)}")
    print(
        f"  outage of its partitions {sorted(outcome.killed_held)}: "
        f"{_seconds(outcome.outage_s)} from the kill"
    )
    print(f"  the other worker after the kill: revoked {_sets(outcome.other_revoked)}")
    print(f"                                   assigned {_sets(outcome.other_assigned)}")
    print(f"  requests unanswered after the drain: {outcome.unanswered}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rejoin", description=__doc__)
    parser.add_argument(
        "--modes", nargs="+", choices=("dynamic", "static"), default=["dynamic", "static"]
    )
    parser.add_argument(
        "--strategy",
        default="range",
        choices=("range", "roundrobin", "cooperative-sticky"),
        help="partition.assignment.strategy (default range)",
    )
    parser.add_argument("--partitions", type=int, default=6, help="input partitions (default 6)")
    parser.add_argument("--rate", type=int, default=200, help="requests per second (default 200)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-rejoin-"))
    started = time.monotonic()
    outcomes = []
    with stop_on_sigterm(), EmbeddedBroker(free_port(), log_path=log_dir / "broker.log") as broker:
        print(
            f"rejoin: 2 workers, {args.partitions} partitions, {args.strategy}, {args.rate} "
            f"requests/s; worker 1 SIGKILLed and restarted after {RESTART_AFTER_S:g} s; "
            f"logs in {log_dir}/",
            flush=True,
        )
        for mode in args.modes:
            outcome = run_mode(broker.address, mode, args, log_dir)
            report(outcome)
            outcomes.append(outcome)
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if any(o.unanswered or o.first_result_s is None for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
