"""Helpers of the worker tests: deployment configs, `headrace run` subprocesses, requests in,
results and dead letters out.

Everything here is bounded in time: a helper that waits takes a deadline and returns what it
has when the deadline passes, so the test's assertion says what was missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from pipelines import formats
from pipelines.formats import CONTENT_TYPES, Format
from stream.worker.processes import headrace_command

from .support import Topics

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
TENSOR_WIDTH = 29  # the ccfraud model takes float[29]

Headers = list[tuple[str, bytes]]

CCFRAUD_STEPS: list[dict[str, Any]] = [
    {"model": {"name": "ccfraud", "path": str(MODELS / "ccfraud.onnx")}},
    {"check": {"name": "fraud", "expr": "out.dense_1[0] > 0.9"}},
]


# ---------------------------------------------------------------- deployment configs


def write_config(
    directory: Path,
    topics: Topics,
    *,
    name: str = "ccfraud",
    steps: Sequence[Mapping[str, Any]] = CCFRAUD_STEPS,
    kafka: Mapping[str, Any] | None = None,
    batching: Mapping[str, Any] | None = None,
    processing: Mapping[str, Any] | None = None,
    modules: Mapping[str, str] | None = None,
) -> Path:
    """A deployment config in ``directory`` serving ``topics``; ``modules`` are python step
    modules (name -> source) written beside it, where the config resolves them."""
    for module, source in (modules or {}).items():
        (directory / f"{module}.py").write_text(source, encoding="utf-8")
    config = {
        "pipeline": {"name": name, "steps": [dict(step) for step in steps]},
        "kafka": {
            "bootstrap_servers": topics.bootstrap,
            "input_topic": topics.input,
            "output_topic": topics.output,
            "dead_letter_topic": topics.dead_letter,
            "group_id": topics.group_id,
            "partitions": topics.partitions,
            **(kafka or {}),
        },
        "batching": {"max_rows": 1000, "max_wait_ms": 5, **(batching or {})},
        "processing": {"guarantee": "at_least_once", **(processing or {})},
        "metrics": {"port": 0},
    }
    path = directory / f"{name}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- worker processes


class WorkerProcess:
    """One `headrace run` subprocess in its own process group, logging to a file."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *extra_args: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        env = {**os.environ, "HEADRACE_METRICS__PORT": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
        env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            headrace_command("run", str(config), *extra_args),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: replicas die with it in teardown
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_count(self, text: str) -> int:
        """How many log lines contain ``text``."""
        return sum(text in line for line in self.log().splitlines())

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> bool:
        """Wait until ``count`` log lines contain ``text``; False if the process exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(text) >= count:
                return True
            if self.process.poll() is not None:
                return self.log_count(text) >= count
            time.sleep(0.05)
        return False

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout``."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL its whole process group (the worker and any replicas it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()


class Fleet:
    """The worker processes, producers and readers of one test; ``close`` ends them all and
    prints the tail of every worker log (pytest shows it when the test failed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers: list[WorkerProcess] = []
        self._closers: list[Callable[[], None]] = []

    def start(
        self,
        config: Path,
        *extra_args: str,
        ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """Start `headrace run CONFIG`; with ``ready`` wait until it has partitions."""
        log_path = self.directory / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(config, log_path, *extra_args, env=env)
        self.workers.append(worker)
        if ready:
            assert worker.wait_for_log("partitions assigned", timeout=30), (
                f"worker {worker.pid} got no partitions within 30 s:\n{worker.log()}"
            )
        return worker

    def requests(self, topics: Topics, *, max_message_bytes: int | None = None) -> Requests:
        requests = Requests(topics, max_message_bytes=max_message_bytes)
        self._closers.append(requests.close)
        return requests

    def outputs(self, topics: Topics, *, read_committed: bool = False) -> Outputs:
        outputs = Outputs(topics, read_committed=read_committed)
        self._closers.append(outputs.close)
        return outputs

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        for closer in reversed(self._closers):
            closer()
        for worker in self.workers:
            lines = worker.log().splitlines()
            print(f"---- {worker.log_path.name} (pid {worker.pid}), last 60 of {len(lines)} lines")
            print("\n".join(lines[-60:]))


@dataclass(frozen=True, slots=True)
class Assignment:
    """A "partitions assigned" / "revoked" log line: which partition indexes it named."""

    event: str
    partitions: frozenset[int]


def assignments(worker: WorkerProcess) -> list[Assignment]:
    """The rebalance events in a worker's JSON log, in order."""
    events = []
    for line in worker.log().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("event", "").startswith(("partitions assigned", "partitions revoked")):
            indexes = frozenset(int(p.rsplit("[", 1)[1].rstrip("]")) for p in record["partitions"])
            events.append(Assignment(record["event"].split(";")[0], indexes))
    return events


# ---------------------------------------------------------------- requests in


@dataclass(frozen=True, slots=True)
class Request:
    """A request to produce: payload, key, headers, and optionally a fixed partition."""

    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=list)
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A request as the broker stored it."""

    request: Request
    partition: int
    offset: int

    @property
    def where(self) -> tuple[int, int]:
        return self.partition, self.offset


class Requests:
    """Produces requests to the input topic and remembers where each one landed."""

    def __init__(self, topics: Topics, *, max_message_bytes: int | None = None) -> None:
        self.topics = topics
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        config: dict[str, Any] = {
            "bootstrap.servers": topics.bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
        }
        if max_message_bytes is not None:
            config["message.max.bytes"] = max_message_bytes
        self._producer = Producer(config)

    def send(self, requests: Iterable[Request], timeout: float = 30.0) -> list[Sent]:
        """Produce ``requests`` and wait for every acknowledgement; the stored ones, in order."""
        slots: list[Sent | None] = []
        for request in requests:
            self.produce(request, slots)
        remaining = self._producer.flush(timeout)
        assert remaining == 0, f"{remaining} requests not acknowledged within {timeout} s"
        stored = [slot for slot in slots if slot is not None]
        assert len(stored) == len(slots), "some requests were refused by the broker"
        return stored

    def stream(self, requests: Sequence[Request], per_second: float) -> Stream:
        """Produce ``requests`` from a thread at about ``per_second``; see :class:`Stream`."""
        return Stream(self, requests, per_second)

    def end_offsets(self) -> dict[int, int]:
        """The input topic's end offset per partition, from what this producer stored.

        Tansu's ListOffsets under-reports after multi-record batches (docs/tansu.md), and
        nothing else produces to a test's input topic.
        """
        with self._lock:
            ends = dict.fromkeys(range(self.topics.partitions), 0)
            for sent in self.sent:
                ends[sent.partition] = max(ends[sent.partition], sent.offset + 1)
            return ends

    def flush(self, timeout: float) -> int:
        """Wait for acknowledgements; how many requests are still unacknowledged."""
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        self._producer.flush(10)

    def produce(self, request: Request, slots: list[Sent | None]) -> None:
        """Produce without waiting; its :class:`Sent` lands in ``slots`` when acknowledged."""
        index = len(slots)
        slots.append(None)

        def delivered(error: object, message: Message) -> None:
            partition, offset = message.partition(), message.offset()
            if error is None and partition is not None and offset is not None:
                sent = Sent(request, partition, offset)
                slots[index] = sent
                with self._lock:
                    self.sent.append(sent)

        options: dict[str, Any] = {"key": request.key, "headers": request.headers}
        if request.partition is not None:
            options["partition"] = request.partition
        while True:
            try:
                self._producer.produce(
                    self.topics.input, request.value, on_delivery=delivered, **options
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)


class Stream:
    """A background producer: requests go out at a steady rate until all sent or stopped."""

    def __init__(self, requests: Requests, items: Sequence[Request], per_second: float) -> None:
        self._requests = requests
        self._items = items
        self._interval = 1 / per_second
        self._stop = threading.Event()
        self.produced = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        slots: list[Sent | None] = []
        for index, item in enumerate(self._items):
            if self._stop.is_set():
                break
            delay = started + index * self._interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._requests.produce(item, slots)
            self.produced += 1
        self._requests.flush(30)

    def stop(self, timeout: float = 30.0) -> list[Sent]:
        """Stop producing, wait for acknowledgements; every request the broker stored."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request stream did not stop"
        return list(self._requests.sent)

    def finish(self, timeout: float = 60.0) -> list[Sent]:
        """Wait until every request was produced and acknowledged."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request stream did not finish in time"
        return list(self._requests.sent)


# ---------------------------------------------------------------- results out


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed result or dead letter."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers

    def header(self, name: str) -> str:
        values = [value for key, value in self.headers if key == name]
        assert len(values) == 1, f"header {name!r} appears {len(values)} times in {self.headers}"
        return values[0].decode()

    def has_header(self, name: str) -> bool:
        return any(key == name for key, _ in self.headers)

    @property
    def source(self) -> tuple[int, int]:
        """(x-source-partition, x-source-offset): the request this record answers."""
        return int(self.header("x-source-partition")), int(self.header("x-source-offset"))


class Outputs:
    """Reads the output and dead-letter topics from the beginning (no group join, no commit)."""

    def __init__(self, topics: Topics, *, read_committed: bool = False) -> None:
        self.topics = topics
        self.results: list[Record] = []
        self.dead_letters: list[Record] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": topics.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if read_committed else "read_uncommitted",
                "fetch.wait.max.ms": 10,
            }
        )
        self._consumer.assign(
            [
                TopicPartition(topic, index, OFFSET_BEGINNING)
                for topic in (topics.output, topics.dead_letter)
                for index in range(topics.partitions)
            ]
        )

    def answered(self) -> set[tuple[int, int]]:
        """(partition, offset) of every request with a result or a dead letter so far."""
        return {record.source for record in self.results + self.dead_letters}

    def poll(self, timeout: float = 0.1) -> None:
        for message in self._consumer.consume(1000, timeout):
            error = message.error()
            assert error is None, error
            record = _record(message)
            if record.topic == self.topics.output:
                self.results.append(record)
            else:
                self.dead_letters.append(record)

    def wait(self, done: Callable[[Outputs], bool], timeout: float) -> bool:
        """Poll until ``done(self)`` or the deadline; whether it became done."""
        deadline = time.monotonic() + timeout
        while not done(self):
            if time.monotonic() >= deadline:
                return False
            self.poll()
        return True

    def wait_for(self, results: int = 0, dead_letters: int = 0, timeout: float = 30.0) -> None:
        """Poll until at least this many results and dead letters arrived, or the deadline."""
        self.wait(
            lambda o: len(o.results) >= results and len(o.dead_letters) >= dead_letters, timeout
        )

    def wait_answered(self, sent: Iterable[Sent], timeout: float) -> set[tuple[int, int]]:
        """Poll until every request in ``sent`` has an answer; those still missing."""
        wanted = {s.where for s in sent}
        self.wait(lambda o: wanted <= o.answered(), timeout)
        return wanted - self.answered()

    def settle(self, quiet: float = 0.5, timeout: float = 10.0) -> None:
        """Poll until nothing new arrived for ``quiet`` seconds (to catch extra records)."""
        deadline = time.monotonic() + timeout
        last, seen = time.monotonic(), -1
        while time.monotonic() < deadline and time.monotonic() - last < quiet:
            self.poll()
            count = len(self.results) + len(self.dead_letters)
            if count != seen:
                seen, last = count, time.monotonic()

    def duplicates(self) -> Counter[tuple[int, int]]:
        """Requests answered more than once, with how many answers each got."""
        counts = Counter(record.source for record in self.results + self.dead_letters)
        return Counter({where: n for where, n in counts.items() if n > 1})

    def close(self) -> None:
        self._consumer.close()


def _record(message: Message) -> Record:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    raw = [(pair[0], pair[1]) for pair in message.headers() or []]
    headers = [(k, v.encode() if isinstance(v, str) else v or b"") for k, v in raw]
    return Record(
        topic,
        partition,
        offset,
        message.key(),
        message.value() or b"",
        headers,
    )


def committed_offsets(topics: Topics) -> dict[int, int]:
    """The group's committed offset per input partition (-1001 when none)."""
    consumer = Consumer(
        {
            "bootstrap.servers": topics.bootstrap,
            "group.id": topics.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        found = consumer.committed(
            [TopicPartition(topics.input, index) for index in range(topics.partitions)],
            timeout=10,
        )
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


# ---------------------------------------------------------------- request payloads


class Ids:
    """Unique row ids, so every result row can be traced to its request row."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, rows: int) -> list[int]:
        first, self._next = self._next, self._next + rows
        return list(range(first, first + rows))


def ccfraud_table(ids: Sequence[int], seed: int = 0) -> pa.Table:
    """A ccfraud request table: ``tensor`` float[29] and an ``id`` column to carry through."""
    rng = np.random.default_rng(seed)
    tensors = rng.normal(0, 1.5, size=(len(ids), TENSOR_WIDTH)).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(tensors.ravel()), TENSOR_WIDTH)
    return pa.table({"tensor": column.cast(pa.list_(pa.float32())), "id": pa.array(ids)})


def encode(table: pa.Table, fmt: Format, *, single_object: bool = False) -> bytes:
    """The request payload of ``table`` in ``fmt``; ``single_object`` sends one JSON object."""
    if single_object:
        assert fmt is Format.PANDAS_RECORDS and table.num_rows == 1
        return formats.encode_request(table, fmt).strip()[1:-1]
    return formats.encode_request(table, fmt)


def content_type(fmt: Format) -> Headers:
    return [("content-type", CONTENT_TYPES[fmt].encode())]


def decode_rows(record: Record) -> pa.Table:
    """A result's rows as a table, in the format its content-type names."""
    fmt = formats.format_for_content_type(record.header("content-type"))
    assert fmt is not None, record.header("content-type")
    table = formats.decode_response(record.value, fmt)
    assert isinstance(table, pa.Table)
    return table


def by_source(records: Iterable[Record]) -> dict[tuple[int, int], Record]:
    """Records keyed by the request they answer (the last one wins)."""
    return {record.source: record for record in records}


def per_partition(records: Iterable[Record]) -> Iterator[tuple[int, list[Record]]]:
    """Records grouped by the partition they were consumed from, in consumption order."""
    groups: dict[int, list[Record]] = {}
    for record in records:
        groups.setdefault(record.partition, []).append(record)
    yield from sorted(groups.items())
