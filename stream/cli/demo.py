"""``headrace demo``: the example pipelines served for real over Kafka, with a report.

A private embedded broker on a free port (never 127.0.0.1:19092, so a user's broker or a running
``headrace broker`` is left alone), one ``headrace run`` worker process per pipeline, the sample
requests of :mod:`stream.cli.samples` in every format (a few malformed ones and one sent after
its deadline among them), then the results, the dead letters and the throughput as tables.
Everything started here is stopped by pid on the way out: on success, on errors and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipelines import load_settings
from pipelines.config import Settings
from pipelines.formats import decode_response, format_for_content_type
from stream import headers
from stream.cli.display import render_table
from stream.cli.samples import DEMO_PIPELINES, Sample, find_project, samples_for
from stream.kafka.admin import create_topics
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.kafka.clients import KafkaConsumer, KafkaProducer
from stream.kafka.config import consumer_config, producer_config
from stream.types import Envelope, Partition
from stream.worker.processes import WorkerProcess, stop_on_sigterm

__all__ = ["run_demo"]

_READY_TIMEOUT_S = 60.0  # worker start + consumer-group join, on a slow machine
_ANSWER_TIMEOUT_S = 30.0
_INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C
_HIDDEN_COLUMNS = {"time"}  # same for every row of a batch: noise in a table of a few rows


@dataclass(frozen=True, slots=True)
class _Deployment:
    """One example pipeline: its config, settings and sample requests."""

    config: Path
    settings: Settings
    samples: tuple[Sample, ...]

    @classmethod
    def load(cls, config: Path, data_dir: Path) -> _Deployment:
        settings = load_settings(config)
        return cls(config.resolve(), settings, tuple(samples_for(settings, data_dir)))

    @property
    def name(self) -> str:
        return self.settings.pipeline.name


class _Exchange:
    """Sends the samples and reads back the results and dead letters of every pipeline.

    It owns the demo's producer and reader; ``close`` drops both before the broker stops.
    """

    def __init__(self, deployments: list[_Deployment], bootstrap: str) -> None:
        kafka = deployments[0].settings.kafka
        self._producer = KafkaProducer(producer_config(kafka, bootstrap))
        self._consumer = KafkaConsumer(
            consumer_config(kafka, bootstrap, **{"group.id": f"headrace-demo-{time.time_ns()}"})
        )
        self._owner: dict[str, str] = {}  # topic -> pipeline
        for deployment in deployments:
            self._owner[deployment.settings.kafka.output_topic] = deployment.name
            self._owner[deployment.settings.kafka.dead_letter_topic] = deployment.name
        self._dead_topics = {d.settings.kafka.dead_letter_topic for d in deployments}
        self.results: dict[tuple[str, str], Envelope] = {}
        self.dead_letters: dict[tuple[str, str], Envelope] = {}
        self._consumer.subscribe(list(self._owner), _ignore, _ignore)

    def round_trip(
        self,
        requests: list[tuple[_Deployment, Sample]],
        workers: list[WorkerProcess],
        timeout: float,
    ) -> list[str]:
        """Send ``requests`` and wait for their answers; the ones still missing."""
        refused: list[str] = []
        for deployment, sample in requests:

            def delivered(
                error: str | None, what: str = f"{deployment.name}/{sample.request_id}"
            ) -> None:
                if error is not None:
                    refused.append(f"{what} ({error})")

            self._producer.produce(
                deployment.settings.kafka.input_topic,
                sample.value,
                key=sample.key,
                headers=sample.headers,
                partition=None,
                on_delivery=delivered,
            )
        self._producer.flush(10.0)
        if refused:
            raise RuntimeError(f"the broker refused requests: {', '.join(refused)}")
        return self._wait_for(((d.name, s.request_id) for d, s in requests), timeout, workers)

    def _wait_for(
        self, expected: Iterable[tuple[str, str]], timeout: float, workers: list[WorkerProcess]
    ) -> list[str]:
        """Read until every (pipeline, request id) is answered; the ones still missing.

        A worker that exits meanwhile ends the wait with a ``RuntimeError`` showing its log.
        """
        missing = set(expected)
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            _check_running(workers)
            for envelope in self._consumer.consume(500, 0.05):
                topic = envelope.partition.topic
                answer = (self._owner[topic], envelope.request_id)
                found = self.dead_letters if topic in self._dead_topics else self.results
                found[answer] = envelope
                missing.discard(answer)
        return sorted(f"{pipeline}/{request}" for pipeline, request in missing)

    def close(self) -> None:
        self._producer.flush(5.0)
        self._consumer.close()
        del self._producer  # librdkafka's producer goes now, while the broker answers


def run_demo(configs: list[Path] | None, project: Path | None = None) -> int:
    """Serve the sample requests of each config over a private broker and print the results.

    ``project`` holds ``configs/`` and ``data/`` (see :func:`find_project`); without
    ``configs`` the example pipelines in its ``configs/`` are served.
    """
    home = find_project(project)
    paths = configs or [home / "configs" / f"{name}.yaml" for name in DEMO_PIPELINES]
    deployments = [_Deployment.load(path, home / "data") for path in paths]
    log_dir = Path(tempfile.mkdtemp(prefix="headrace-demo-"))
    names = ", ".join(d.name for d in deployments)
    print(f"headrace demo: {names}, served over Kafka by `headrace run` worker processes")
    with stop_on_sigterm(), contextlib.ExitStack() as stack:
        try:
            exchange, workers, started = _start(deployments, log_dir, stack)
            return _serve_samples(deployments, exchange, workers, started)
        except KeyboardInterrupt:
            _say("stopping", "interrupted: stopping what the demo started")
            return _INTERRUPTED
    return 1  # not reached: the with block returns or raises


def _start(
    deployments: list[_Deployment], log_dir: Path, stack: contextlib.ExitStack
) -> tuple[_Exchange, list[WorkerProcess], float]:
    """Broker, topics, reader and workers, each stopped by ``stack`` on the way out."""
    broker = EmbeddedBroker(free_port(), log_path=log_dir / "broker.log").start()
    stack.callback(_stop_broker, broker)
    _say(
        "broker",
        f"embedded Kafka (Tansu, in memory) on {broker.address}, pid {broker.pid}; "
        "a private one on a free port",
    )
    logs = ", ".join(["broker.log", *(f"{d.name}.log" for d in deployments)])
    _say("logs", f"{log_dir}/ ({logs})")
    for deployment in deployments:
        create_topics(deployment.settings, broker.address)
    exchange = _Exchange(deployments, broker.address)
    stack.callback(exchange.close)
    started = time.monotonic()
    workers: list[WorkerProcess] = []
    stack.callback(_stop_workers, workers)
    for deployment in deployments:
        workers.append(_start_worker(deployment, broker.address, log_dir))
    pids = ", ".join(f"{d.name} {w.pid}" for d, w in zip(deployments, workers, strict=True))
    _say("workers", f"pids {pids} (`headrace run CONFIG`, logs at info level)")
    return exchange, workers, started


def _serve_samples(
    deployments: list[_Deployment],
    exchange: _Exchange,
    workers: list[WorkerProcess],
    started: float,
) -> int:
    """Warm up, send every sample, wait for every answer, print the report; the exit code."""
    warmup = [(d, d.samples[0]) for d in deployments]
    missing = exchange.round_trip(warmup, workers, _READY_TIMEOUT_S)
    if missing:
        return _fail(f"no answer within {_READY_TIMEOUT_S:g} s to {', '.join(missing)}")
    _say("ready", f"first results after {time.monotonic() - started:.1f} s (start + group join)")
    burst = [(d, sample) for d in deployments for sample in d.samples[1:]]
    sent_at = time.monotonic()
    missing = exchange.round_trip(burst, workers, _ANSWER_TIMEOUT_S)
    seconds = time.monotonic() - sent_at
    if missing:
        return _fail(f"no answer within {_ANSWER_TIMEOUT_S:g} s to {', '.join(missing)}")
    _say("sent", _sent_line(deployments))
    print(
        "\nresults: the first row of each (rows_flagged: rows with check_failures > 0), "
        "long lists shortened"
    )
    for deployment in deployments:
        _print_results(deployment, exchange)
    _print_dead_letters(deployments, exchange)
    rows = sum(sample.rows for _, sample in burst)
    print(
        f"\nthroughput  {len(burst)} requests, {rows:,} rows in {seconds:.3f} s: "
        f"{rows / seconds:,.0f} rows/s, {len(burst) / seconds:,.0f} requests/s\n"
        "            (after the warm-up; so few requests measure latency more than "
        "throughput: see `make bench`)\n"
    )
    return 0


def _sent_line(deployments: list[_Deployment]) -> str:
    counts = ", ".join(f"{d.name} {len(d.samples)}" for d in deployments)
    malformed = sum(s.malformed for d in deployments for s in d.samples)
    late = sum(s.late for d in deployments for s in d.samples)
    past = f" and {late} sent after its x-deadline" if late else ""
    return f"requests {counts}; {malformed} of them malformed{past} on purpose"


def _print_results(deployment: _Deployment, exchange: _Exchange) -> None:
    kafka = deployment.settings.kafka
    rows = [
        _result_row(sample, exchange.results[deployment.name, sample.request_id])
        for sample in deployment.samples
        if (deployment.name, sample.request_id) in exchange.results
    ]
    topics = f"{kafka.input_topic} -> {kafka.output_topic}"
    print(f"\n{deployment.name}: {topics}, {_count(len(rows), 'result')}")
    print(_indent(render_table(pa.Table.from_pylist(rows), max_rows=20)))


def _result_row(sample: Sample, envelope: Envelope) -> dict[str, object]:
    fmt = format_for_content_type(envelope.header_text("content-type"))
    row: dict[str, object] = {"request": sample.request_id, "format": str(fmt)}
    decoded = decode_response(envelope.value, fmt) if fmt is not None else None
    if not isinstance(decoded, pa.Table):
        row["rows"] = 1
        return row | (decoded if isinstance(decoded, dict) else {"result": decoded})
    row["rows"] = decoded.num_rows
    if "check_failures" in decoded.column_names:
        failures = decoded.column("check_failures").to_pylist()
        row["rows_flagged"] = sum(1 for count in failures if count)
    first = decoded.slice(0, 1).to_pylist()[0]
    shown = {name: _short(value) for name, value in first.items() if name not in _HIDDEN_COLUMNS}
    return row | shown


def _short(value: object) -> object:
    """A matrix (a list of lists, e.g. an image) as its shape: its values would fill the line."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return f"<{len(value)}x{len(value[0])} values>"
    return value


def _print_dead_letters(deployments: list[_Deployment], exchange: _Exchange) -> None:
    rows = []
    for deployment in deployments:
        for sample in deployment.samples:
            envelope = exchange.dead_letters.get((deployment.name, sample.request_id))
            if envelope is None:
                continue
            source = Partition(
                envelope.header_text("x-source-topic") or "?",
                int(envelope.header_text("x-source-partition") or -1),
            )
            rows.append(
                {
                    "pipeline": deployment.name,
                    "key": (envelope.key or b"").decode(errors="replace"),
                    "x-error-type": envelope.header_text(headers.ERROR_TYPE),
                    "x-error-step": envelope.header_text(headers.ERROR_STEP) or "-",
                    "source": f"{source}@{envelope.header_text('x-source-offset')}",
                    "x-error-message": envelope.header_text(headers.ERROR_MESSAGE),
                }
            )
    topics = ", ".join(d.settings.kafka.dead_letter_topic for d in deployments)
    print(f"\ndead letters: {topics}, {_count(len(rows), 'record')}")
    if rows:
        print(_indent(render_table(pa.Table.from_pylist(rows), max_rows=50)))
        print("  messages in full:")
        for row in rows:
            print(f"  - {row['pipeline']}/{row['key']}: {row['x-error-message']}")


def _start_worker(deployment: _Deployment, bootstrap: str, log_dir: Path) -> WorkerProcess:
    log_path = log_dir / f"{deployment.name}.log"
    return WorkerProcess(deployment.config, bootstrap=bootstrap, log_path=log_path).start()


def _check_running(workers: list[WorkerProcess]) -> None:
    for worker in workers:
        if not worker.running():
            raise RuntimeError(
                f"the worker for {worker.config} (pid {worker.pid}) exited with code "
                f"{worker.returncode}; the end of {worker.log_path}:\n{worker.log_tail()}"
            )


def _stop_workers(workers: list[WorkerProcess]) -> None:
    if not workers:
        return
    with _uninterrupted():
        codes = [worker.stop() for worker in workers]
    pids = ", ".join(
        f"{worker.pid} exited {code}" for worker, code in zip(workers, codes, strict=True)
    )
    _say("stopped", f"workers by SIGTERM (finish, commit, exit): {pids}")


def _stop_broker(broker: EmbeddedBroker) -> None:
    pid = broker.pid
    with _uninterrupted():
        broker.stop()
    _say("stopped", f"broker pid {pid}; nothing left running")


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Meanwhile, a second Ctrl-C (or SIGTERM) does not cut the clean-up short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _fail(message: str) -> int:
    print(f"headrace demo: {message}; the logs named above say more")
    return 1


def _say(label: str, text: str) -> None:
    print(f"  {label:<8} {text}", flush=True)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _ignore(partitions: list[Partition]) -> None:
    del partitions
