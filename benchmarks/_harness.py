"""What every benchmark row shares: its own topics, a worker process, a pre-filled input topic."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from benchmarks._kafka import Commits, Drain, Message, fill, read_back, wait_stable
from pipelines import load_settings
from pipelines.config import Settings
from pipelines.formats import CONTENT_TYPES, Format, encode_request
from stream.kafka.admin import create_topics, ensure_topics
from stream.worker.processes import WorkerProcess

__all__ = [
    "REPO",
    "Bench",
    "Row",
    "Topics",
    "arrow_requests",
    "json_requests",
    "sample_table",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table: a figure next to its SPEC §10 target."""

    label: str
    what: str
    measured: float | None
    unit: str
    target: float | None = None
    lower_is_better: bool = False
    how: str = ""

    @property
    def ratio(self) -> float | None:
        """How far from the target, > 1 = better than it (None without a target or a figure)."""
        if self.measured is None or not self.target:
            return None
        if self.lower_is_better:
            return self.target / self.measured if self.measured else float("inf")
        return self.measured / self.target

    @property
    def status(self) -> str:
        if self.measured is None:
            return "skipped"
        if self.target is None:
            return "-"
        met = self.measured <= self.target if self.lower_is_better else self.measured >= self.target
        return "meets" if met else "MISSES"


@dataclass(frozen=True, slots=True)
class Topics:
    """A row's own topics and consumer group, as settings and as worker environment."""

    input: str
    output: str
    dead_letter: str
    group_id: str

    @classmethod
    def named(cls, label: str) -> Topics:
        return cls(
            f"bench-{label}-in", f"bench-{label}-out", f"bench-{label}-dlq", f"bench-{label}"
        )

    def settings(self, settings: Settings) -> Settings:
        kafka = settings.kafka.model_copy(
            update={
                "input_topic": self.input,
                "output_topic": self.output,
                "dead_letter_topic": self.dead_letter,
                "group_id": self.group_id,
            }
        )
        return settings.model_copy(update={"kafka": kafka})

    @property
    def environment(self) -> dict[str, str]:
        return {
            "HEADRACE_KAFKA__INPUT_TOPIC": self.input,
            "HEADRACE_KAFKA__OUTPUT_TOPIC": self.output,
            "HEADRACE_KAFKA__DEAD_LETTER_TOPIC": self.dead_letter,
            "HEADRACE_KAFKA__GROUP_ID": self.group_id,
        }


class Bench:
    """The bench broker, a folder for worker logs, and the run's size (quick or full)."""

    def __init__(self, bootstrap: str, log_dir: Path, *, quick: bool) -> None:
        self.bootstrap = bootstrap
        self.log_dir = log_dir
        self.quick = quick

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def prepare(self, label: str, config: Path) -> tuple[Topics, Settings]:
        """Create the row's topics (the config's partitions) and return them with its settings."""
        topics = Topics.named(label)
        settings = topics.settings(load_settings(config))
        create_topics(settings, self.bootstrap)
        return topics, settings

    def worker(self, label: str, config: Path, topics: Topics) -> WorkerProcess:
        """A ``headrace run`` worker on the row's topics, logging warnings to a file."""
        return WorkerProcess(
            config,
            bootstrap=self.bootstrap,
            log_path=self.log_dir / f"{label}.log",
            log_level="warning",
            overrides=topics.environment,
        ).start()

    def serve_prefilled(
        self, label: str, config: Path, messages: list[Message], timeout: float = 180.0
    ) -> tuple[Drain, int]:
        """Fill the input topic, start a worker, let it drain the topic; the drain, dead letters."""
        topics, settings = self.prepare(label, config)
        partitions = settings.kafka.partitions
        fill(self.bootstrap, topics.input, messages, partitions)
        commits = Commits(self.bootstrap, topics.group_id, topics.input, partitions)
        worker = self.worker(label, config, topics)
        try:
            started_at = _stable(self.bootstrap, topics.group_id)
            wait_until(lambda: commits.total() >= len(messages), timeout, every=0.1)
        finally:
            worker.stop()
            commits.close()
        records = read_back(
            self.bootstrap, [topics.output, topics.dead_letter], partitions, len(messages)
        )
        results = [record for record in records if record.topic == topics.output]
        return Drain.of(results, len(messages), started_at), len(records) - len(results)

    def copy(self, source: str, count: int, timeout: float = 180.0) -> Drain:
        """Time the raw consume -> produce baseline copying ``count`` messages of ``source``."""
        target = f"{source}-copy"
        ensure_topics(self.bootstrap, {target: 4}, config={"max.message.bytes": "2000000"})
        command = [sys.executable, "-m", "benchmarks._copy", self.bootstrap, source, target]
        process = subprocess.Popen([*command, str(count)])
        try:
            started_at = _stable(self.bootstrap, f"headrace-bench-copy-{source}")
            process.wait(timeout)
        finally:
            process.kill()
            process.wait()
        return Drain.of(read_back(self.bootstrap, [target], 4, count), count, started_at)


def _stable(bootstrap: str, group_id: str, timeout: float = 60.0) -> float:
    started_at = wait_stable(bootstrap, group_id, timeout)
    if started_at is None:
        raise RuntimeError(f"consumer group '{group_id}' got no partitions within {timeout:g} s")
    return started_at


def sample_table() -> pa.Table:
    """The 1,000 rows of ``data/ccfraud_1k.arrow`` (a ``tensor`` of 29 float32 each)."""
    return pa.ipc.open_file(REPO / "data" / "ccfraud_1k.arrow").read_all()


def json_requests(count: int, *, ids: str | None = None) -> list[Message]:
    """``count`` one-row pandas-records requests cycling through the sample rows.

    With ``ids``, request i carries ``x-request-id: <ids>-<i>``.
    """
    table = sample_table()
    payloads = [encode_request(table.slice(i, 1), Format.PANDAS_RECORDS) for i in range(1000)]
    content = (("content-type", CONTENT_TYPES[Format.PANDAS_RECORDS].encode()),)
    if ids is None:
        return [(None, payloads[i % 1000], content) for i in range(count)]
    return [
        (None, payloads[i % 1000], (*content, ("x-request-id", f"{ids}-{i}".encode())))
        for i in range(count)
    ]


def arrow_requests(count: int) -> list[Message]:
    """``count`` 1,000-row Arrow stream requests (the sample rows each time)."""
    payload = encode_request(sample_table(), Format.ARROW_STREAM)
    content = (("content-type", CONTENT_TYPES[Format.ARROW_STREAM].encode()),)
    return [(None, payload, content)] * count


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False
