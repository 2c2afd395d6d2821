"""The five measurements of SPEC §10, each against the bench broker with real worker processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from benchmarks._harness import (
    REPO,
    Bench,
    Row,
    arrow_requests,
    json_requests,
    sample_table,
    wait_until,
)
from benchmarks._kafka import Commits, Drain, fill, read_back
from benchmarks._latency import THREADS, find_connect, measure_client
from benchmarks._ort import bare_rows_per_second

__all__ = ["ROWS"]

CCFRAUD = REPO / "configs" / "ccfraud.yaml"
HEAVY = REPO / "configs" / "heavy.yaml"
HEAVY_MODEL = REPO / "models" / "heavy.onnx"
_DRAINED = (
    "input topic pre-filled, then the worker started; timed from its consumer group becoming "
    "Stable (partitions assigned) to the last result's CreateTime"
)


def single_row_json(bench: Bench) -> list[Row]:
    """Row 1: one-row pandas-records requests through the ccfraud model, one worker process."""
    count = bench.size(20_000, 100_000)
    drain, dead = bench.serve_prefilled("json", CCFRAUD, json_requests(count))
    how = f"{count:,} requests; {_DRAINED}{_shortfall(drain, dead)}"
    what = "single-row pandas-records JSON, ccfraud, 1 worker"
    return [Row("1", what, _rate(drain), "requests/s", 50_000, how=how)]


def arrow_1000_rows(bench: Bench) -> list[Row]:
    """Row 2: 1,000-row Arrow stream requests, and the raw consume+produce copy of the same."""
    count = bench.size(200, 1_000)
    drain, dead = bench.serve_prefilled("arrow", CCFRAUD, arrow_requests(count))
    raw = bench.copy("bench-arrow-in", count)
    worker_rows, raw_rows = _rate(drain, 1000), _rate(raw, 1000)
    share = 100 * worker_rows / raw_rows if worker_rows and raw_rows else None
    return [
        Row(
            "2a",
            "1,000-row Arrow stream requests, ccfraud, 1 worker",
            worker_rows,
            "rows/s",
            500_000,
            how=f"{count:,} requests of 1,000 rows; {_DRAINED}{_shortfall(drain, dead)}",
        ),
        Row(
            "2b",
            "  the same, as % of raw consume+produce",
            share,
            "%",
            60,
            how=(
                f"raw: a plain confluent-kafka consume(1000) -> produce loop in its own process, "
                f"the worker's librdkafka settings, no commits, copying the same {count:,} "
                f"requests: {raw_rows or 0:,.0f} rows/s, timed like the worker"
            ),
        ),
    ]


def compute_bound(bench: Bench) -> list[Row]:
    """Row 3: the heavy model over Kafka against bare onnxruntime on the same batches."""
    if not HEAVY_MODEL.exists():
        print(f"  building {HEAVY_MODEL.relative_to(REPO)} (once) ...", flush=True)
        script = [sys.executable, "scripts/build_models.py", "--only", "heavy"]
        subprocess.run(script, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    count = bench.size(30, 150)
    drain, dead = bench.serve_prefilled("heavy", HEAVY, arrow_requests(count))
    worker_rows = _rate(drain, 1000)
    tensor = sample_table().column("tensor").combine_chunks()
    batch = np.asarray(tensor.flatten(), dtype=np.float32).reshape(len(tensor), -1)
    bare = bare_rows_per_second(HEAVY_MODEL, [batch] * count)
    share = 100 * worker_rows / bare if worker_rows else None
    how = (
        f"configs/heavy.yaml, {count} Arrow requests of 1,000 rows: worker {worker_rows or 0:,.0f} "
        f"rows/s ({_DRAINED}); bare InferenceSession.run on the same {count} numpy batches in "
        f"a loop, in this process with the worker stopped: {bare:,.0f} rows/s"
        f"{_shortfall(drain, dead)}"
    )
    what = "compute-bound model (heavy), Arrow, % of bare onnxruntime"
    return [Row("3", what, share, "%", 95, how=how)]


def client_latency(bench: Bench) -> list[Row]:
    """Row 4: ``client.infer`` of one row at ~1,000 requests/s, if the client exists."""
    what = "client.infer, 1 row at ~1,000 requests/s: p99"
    connect = find_connect()
    if connect is None:
        return [_latency_row(what, None, "skipped: client not available")]
    topics, _ = bench.prepare("client", CCFRAUD)
    environment = {"HEADRACE_KAFKA__BOOTSTRAP_SERVERS": bench.bootstrap, **topics.environment}
    seconds = bench.size(2, 10)
    row = {"tensor": sample_table().column("tensor")[0].as_py()}
    worker = bench.worker("client", CCFRAUD, topics)
    try:
        measured = measure_client(connect, CCFRAUD, environment, row, rate=1000, seconds=seconds)
    finally:
        worker.stop()
    if not measured.scheduled:
        return [_latency_row(what, None, f"all {measured.errors} calls failed")]
    p50, p99 = np.percentile(measured.scheduled, [50, 99])
    s50, s99 = np.percentile(measured.service, [50, 99])
    how = (
        f"{len(measured.scheduled):,} calls scheduled at 1,000/s for {seconds} s from {THREADS} "
        f"threads sharing one client ({measured.achieved:,.0f} calls/s done); latency from each "
        f"call's scheduled time to its return, queueing included: p50 {p50:.1f} ms, max "
        f"{max(measured.scheduled):.1f} ms; the calls alone (start to return): p50 {s50:.1f} ms, "
        f"p99 {s99:.1f} ms; {measured.errors} errors; one call at a time, without load: median "
        f"{statistics.median(measured.alone):.1f} ms"
    )
    return [_latency_row(what, float(p99), how)]


def _latency_row(what: str, p99: float | None, how: str) -> Row:
    return Row("4", what, p99, "ms", 20, lower_is_better=True, how=how)


def sigkill_recovery(bench: Bench) -> list[Row]:
    """Row 5: a worker SIGKILLed mid-stream and restarted; no request may be lost."""
    count = bench.size(10_000, 50_000)
    topics, settings = bench.prepare("kill", CCFRAUD)
    partitions = settings.kafka.partitions
    fill(bench.bootstrap, topics.input, json_requests(count, ids="kill"), partitions)
    commits = Commits(bench.bootstrap, topics.group_id, topics.input, partitions)
    try:
        first = bench.worker("kill-1", CCFRAUD, topics)
        try:
            wait_until(lambda: commits.total() >= count // 4, 120, every=0.02)
        finally:
            first.kill()
        at_kill = commits.total()
        restarted = time.monotonic()
        second = bench.worker("kill-2", CCFRAUD, topics)
        try:
            done = wait_until(lambda: commits.total() >= count, 180, every=0.1)
            recovery = time.monotonic() - restarted
        finally:
            second.stop()
    finally:
        commits.close()
    records = read_back(bench.bootstrap, [topics.output, topics.dead_letter], partitions, 2 * count)
    ids = [record.request_id for record in records]
    unique = set(ids) & {f"kill-{i}".encode() for i in range(count)}
    lost, duplicates = count - len(unique), len(ids) - len(set(ids))
    how = (
        f"{count:,} one-row requests with ids; SIGKILL once {at_kill:,} were committed; a new "
        f"worker, started at once, {'finished' if done else 'had NOT finished'} "
        f"{recovery:.1f} s later (group rejoin included); ids read back from output + dead letters"
    )
    return [
        Row(
            "5a",
            "SIGKILL mid-stream + restart: requests lost",
            lost,
            "requests",
            0,
            lower_is_better=True,
            how=how,
        ),
        Row(
            "5b",
            "  duplicates (at-least-once repeats)",
            duplicates,
            "requests",
            how="results published but not yet committed at the kill, served again",
        ),
    ]


ROWS: tuple[tuple[str, Callable[[Bench], list[Row]]], ...] = (
    ("single-row JSON", single_row_json),
    ("1,000-row Arrow + raw baseline", arrow_1000_rows),
    ("compute-bound model vs bare onnxruntime", compute_bound),
    ("client.infer latency", client_latency),
    ("SIGKILL recovery", sigkill_recovery),
)


def _rate(drain: Drain, rows_per_request: int = 1) -> float | None:
    return None if drain.rate is None else drain.rate * rows_per_request


def _shortfall(drain: Drain, dead: int) -> str:
    text = f"; first result {drain.first_s * 1000:,.0f} ms after the assignment"
    if not drain.complete:
        text += f"; ONLY {drain.seen:,} of {drain.expected:,} in time"
    return text + (f"; {dead:,} dead-lettered" if dead else "")
