"""What every tool run shares: the workloads, a run's own topics, the pre-filled input topic,
the timing from the consumer group's assignment to the last result, and the check of every
result against onnxruntime run in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import yaml

from benchmarks._check import Reference, check
from benchmarks._kafka import (
    Message,
    Record,
    create_topics,
    delete_topics,
    fill,
    read_back,
    wait_stable,
)
from pipelines.formats import CONTENT_TYPES, Format, encode_request

__all__ = [
    "PARTITIONS",
    "REPO",
    "Bench",
    "Run",
    "Running",
    "Topics",
    "Workload",
    "arrow_requests",
    "bench_config",
    "json_requests",
    "process_cpu_seconds",
    "sample_rows",
    "sample_table",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 4  # as configs/ccfraud.yaml and configs/heavy.yaml
MODELS = {"small": REPO / "models" / "ccfraud.onnx", "heavy": REPO / "models" / "heavy.onnx"}
_TICKS = os.sysconf("SC_CLK_TCK")
_CONFIGS = {"small": REPO / "configs" / "ccfraud.yaml", "heavy": REPO / "configs" / "heavy.yaml"}


@dataclass(frozen=True, slots=True)
class Workload:
    """J (single-row pandas-records JSON) or A (1,000-row Arrow), with the small or heavy model."""

    kind: str  # "J" or "A"
    model: str  # "small" or "heavy"
    requests: int
    messages: list[Message] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.model}"

    @property
    def rows_per_request(self) -> int:
        return 1 if self.kind == "J" else 1000

    @property
    def wire(self) -> str:
        return "json" if self.kind == "J" else "arrow"

    @property
    def unit(self) -> str:
        return "requests/s" if self.kind == "J" else "rows/s"

    @property
    def model_path(self) -> Path:
        return MODELS[self.model]

    @classmethod
    def make(cls, kind: str, model: str, requests: int) -> Workload:
        build = json_requests if kind == "J" else arrow_requests
        return cls(kind, model, requests, build(requests))


@dataclass(frozen=True, slots=True)
class Topics:
    """A run's own topics and consumer group, as worker environment too."""

    input: str
    output: str
    dead_letter: str
    group_id: str

    @classmethod
    def named(cls, label: str) -> Topics:
        return cls(
            f"bench-{label}-in", f"bench-{label}-out", f"bench-{label}-dlq", f"bench-{label}"
        )

    @property
    def all(self) -> list[str]:
        return [self.input, self.output, self.dead_letter]

    @property
    def environment(self) -> dict[str, str]:
        return {
            "HEADRACE_KAFKA__INPUT_TOPIC": self.input,
            "HEADRACE_KAFKA__OUTPUT_TOPIC": self.output,
            "HEADRACE_KAFKA__DEAD_LETTER_TOPIC": self.dead_letter,
            "HEADRACE_KAFKA__GROUP_ID": self.group_id,
        }


@dataclass(frozen=True, slots=True)
class Run:
    """One tool on one workload in one repetition: its rate and what the check found."""

    tool: str
    workload: str
    repetition: int
    rate: float | None  # requests/s (J) or rows/s (A); None when it did not finish
    seconds: float  # assignment -> last result
    problems: tuple[str, ...] = ()
    cpu_ms: float | None = None  # the tool's CPU per 1,000 rows, assignment -> finished
    broker_cpu_ms: float | None = None  # the broker's meanwhile, per 1,000 rows
    first_s: float | None = None  # assignment -> first result
    steady: float | None = None  # the rate from the first result to the last (start-up left out)


class Running(Protocol):
    """A tool started on a run's topics."""

    def finished(self) -> bool:
        """Whether it has served every request (committed, or exited after flushing)."""
        ...

    def cpu_seconds(self) -> float | None:
        """Its CPU time so far, every thread (the final figure once it has exited)."""
        ...

    def stop(self) -> None:
        """Stop it (gracefully where it can) and reap it."""
        ...

    def times(self, results: list[Record]) -> tuple[float, float] | None:
        """When (``time.time()``) it produced the first and the last result."""
        ...

    def failure(self) -> str:
        """Why it stopped early, from its log; empty if it did not."""
        ...


Start = Callable[["Bench", Workload, Topics], Running]


class Bench:
    """One fresh broker (a repetition), a folder for logs, and the run's size."""

    def __init__(
        self, bootstrap: str, log_dir: Path, *, quick: bool, broker_pid: int | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.log_dir = log_dir
        self.quick = quick
        self.broker_pid = broker_pid

    def size(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def topics(self, label: str) -> Topics:
        """The run's topics, created empty with the configs' partition count."""
        topics = Topics.named(label)
        create_topics(self.bootstrap, topics.all, PARTITIONS)
        return topics

    def measure(
        self,
        tool: str,
        start: Start,
        workload: Workload,
        *,
        repetition: int,
        reference: Reference | None,
        timeout: float = 240.0,
    ) -> Run:
        """Fill a fresh input topic with ``workload``, start the tool, time its drain, check
        every result (``reference`` None: only one result per request, no values).

        The rate is over the drain, from the assignment to the last result: a tool that
        produces its results in bursts (a batch consumed whole, published at its end) is timed
        as fairly as one that produces as it goes. The first result's time is kept beside it.
        """
        topics = self.topics(f"r{repetition}-{workload.label}-{tool}")
        cpu: list[float | None] = []
        try:
            fill(self.bootstrap, topics.input, workload.messages, PARTITIONS)
            running = start(self, workload, topics)
            try:
                started_at = wait_stable(self.bootstrap, topics.group_id, 90)
                cpu += [running.cpu_seconds(), process_cpu_seconds(self.broker_pid)]
                finished = started_at is not None and wait_until(running.finished, timeout, 0.1)
                cpu += [running.cpu_seconds(), process_cpu_seconds(self.broker_pid)]
                why = running.failure()
            finally:
                running.stop()
            records = read_back(
                self.bootstrap, [topics.output, topics.dead_letter], PARTITIONS, workload.requests
            )
            times = running.times([r for r in records if r.topic == topics.output])
        finally:
            delete_topics(self.bootstrap, topics.all)
        results = [record for record in records if record.topic == topics.output]
        problems = check(workload, results, reference)
        if dead := len(records) - len(results):
            problems.append(f"{dead:,} dead-lettered")
        if started_at is None:
            problems.append("no partitions assigned within 90 s")
        elif why:
            problems.append(why)
        elif not finished:
            problems.append(f"not finished within {timeout:g} s")
        done = finished and not why
        if started_at is None or times is None or not done or times[1] <= started_at:
            return Run(tool, workload.label, repetition, None, 0.0, tuple(problems))
        first, last = times
        rows = workload.requests * workload.rows_per_request
        after_first = rows - workload.rows_per_request
        return Run(
            tool,
            workload.label,
            repetition,
            rows / (last - started_at),
            last - started_at,
            tuple(problems),
            _per_1000(cpu[0], cpu[2], rows),
            _per_1000(cpu[1], cpu[3], rows),
            first - started_at,
            after_first / (last - first) if last > first else None,
        )


def _per_1000(before: float | None, after: float | None, rows: int) -> float | None:
    if before is None or after is None:
        return None
    return (after - before) * 1000 / rows * 1000


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of process ``pid`` (all its threads), from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def bench_config(model: str, into: Path) -> Path:
    """configs/ccfraud.yaml or heavy.yaml with the model step only and results carrying
    ``out.*`` only: the job every tool does."""
    source = _CONFIGS[model]
    doc = yaml.safe_load(source.read_text())
    steps = [step for step in doc["pipeline"]["steps"] if "model" in step]
    for step in steps:
        step["model"]["path"] = str((source.parent / step["model"]["path"]).resolve())
    doc["pipeline"]["steps"] = steps
    doc["processing"]["dataset"] = ["out"]
    path = into / f"bench-{model}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sample_table() -> pa.Table:
    """The 1,000 rows of ``data/ccfraud_1k.arrow`` (a ``tensor`` of 29 float32 each)."""
    return pa.ipc.open_file(REPO / "data" / "ccfraud_1k.arrow").read_all()


def sample_rows() -> npt.NDArray[np.float32]:
    """The sample rows as the (1000, 29) float32 batch every request's rows come from."""
    tensor = sample_table().column("tensor").combine_chunks()
    return np.asarray(tensor.flatten(), dtype=np.float32).reshape(len(tensor), -1)


def json_requests(count: int, *, ids: str | None = None) -> list[Message]:
    """``count`` one-row pandas-records requests cycling through the sample rows, request i
    keyed ``str(i)``; with ``ids``, it carries ``x-request-id: <ids>-<i>`` too."""
    table = sample_table()
    payloads = [encode_request(table.slice(i, 1), Format.PANDAS_RECORDS) for i in range(1000)]
    content = (("content-type", CONTENT_TYPES[Format.PANDAS_RECORDS].encode()),)
    if ids is None:
        return [(str(i).encode(), payloads[i % 1000], content) for i in range(count)]
    return [
        (str(i).encode(), payloads[i % 1000], (*content, ("x-request-id", f"{ids}-{i}".encode())))
        for i in range(count)
    ]


def arrow_requests(count: int) -> list[Message]:
    """``count`` 1,000-row Arrow stream requests (the sample rows each time), keyed ``str(i)``."""
    payload = encode_request(sample_table(), Format.ARROW_STREAM)
    content = (("content-type", CONTENT_TYPES[Format.ARROW_STREAM].encode()),)
    return [(str(i).encode(), payload, content) for i in range(count)]


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` passes; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False
