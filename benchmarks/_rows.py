"""The measurements beside the throughput runs: one-row latency against the broker's own, and
requests lost when the worker is SIGKILLed mid-stream."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._harness import PARTITIONS, Bench, json_requests, sample_table, wait_until
from benchmarks._kafka import Commits, delete_topics, fill, read_back
from benchmarks._latency import (
    BROKER_SETTINGS,
    THREADS,
    broker_one_way,
    broker_one_way_paced,
    find_connect,
    measure_client,
)
from stream.worker.processes import WorkerProcess

__all__ = ["Latency", "Sigkill", "latency", "sigkill"]


@dataclass(frozen=True, slots=True)
class Latency:
    """p50 / p99 in milliseconds: the broker's one-way (one at a time, and paced as the client
    is), ``client.infer`` alone and paced."""

    broker: tuple[float, float]
    broker_paced: tuple[float, float]
    alone: tuple[float, float]
    paced: tuple[float, float]
    how: str


@dataclass(frozen=True, slots=True)
class Sigkill:
    """Requests lost and repeated across a SIGKILL and a restart."""

    lost: int
    duplicates: int
    how: str


def _worker(bench: Bench, config: Path, label: str, environment: dict[str, str]) -> WorkerProcess:
    return WorkerProcess(
        config,
        bootstrap=bench.bootstrap,
        log_path=bench.log_dir / f"{label}.log",
        log_level="warning",
        overrides=environment,
    ).start()


def latency(bench: Bench, config: Path, repetition: int) -> Latency | str:
    """The broker's one-way latency, then ``client.infer`` of one row through a worker: one at
    a time, and at 1,000 requests/s. A string says why it was skipped."""
    connect = find_connect()
    if connect is None:
        return "skipped: the client (stream.connect) is not available"
    broker = broker_one_way(bench.bootstrap, f"bench-r{repetition}-one-way", bench.size(300, 1000))
    alone, seconds = bench.size(150, 500), bench.size(3, 10)
    broker_paced = broker_one_way_paced(
        bench.bootstrap,
        f"bench-r{repetition}-one-way-paced",
        rate=1000,
        seconds=seconds,
        partitions=PARTITIONS,
    )
    topics = bench.topics(f"r{repetition}-client")
    row = {"tensor": sample_table().column("tensor")[0].as_py()}
    environment = {"HEADRACE_KAFKA__BOOTSTRAP_SERVERS": bench.bootstrap, **topics.environment}
    worker = _worker(bench, config, f"r{repetition}-client", topics.environment)
    try:
        measured = measure_client(
            connect, config, environment, row, alone=alone, rate=1000, seconds=seconds
        )
    except Exception as exc:  # a broken client must not hide the other figures
        return f"failed: {type(exc).__name__}: {exc}"
    finally:
        worker.stop()
        delete_topics(bench.bootstrap, topics.all)
    if not measured.scheduled:
        return f"failed: all {measured.errors} paced calls failed"
    how = (
        f"broker one-way: {len(broker):,} records produced and consumed one at a time "
        f"({BROKER_SETTINGS}), then {len(broker_paced):,} produced at 1,000/s for {seconds} s "
        f"to a fresh {PARTITIONS}-partition topic; client.infer: {alone:,} calls one at a time, "
        "then "
        f"{len(measured.scheduled):,} calls scheduled at 1,000/s for {seconds} s from {THREADS} "
        f"threads sharing one client ({measured.achieved:,.0f} calls/s done, "
        f"{measured.errors} errors), each timed from its scheduled start to its return"
    )
    return Latency(_p(broker), _p(broker_paced), _p(measured.alone), _p(measured.scheduled), how)


def _p(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def sigkill(bench: Bench, config: Path) -> Sigkill:
    """A worker SIGKILLed mid-stream and restarted at once; no request may be lost."""
    count = bench.size(10_000, 50_000)
    topics = bench.topics("kill")
    fill(bench.bootstrap, topics.input, json_requests(count, ids="kill"), PARTITIONS)
    commits = Commits(bench.bootstrap, topics.group_id, topics.input, PARTITIONS)
    try:
        first = _worker(bench, config, "kill-1", topics.environment)
        try:
            wait_until(lambda: commits.total() >= count // 4, 120, every=0.02)
        finally:
            first.kill()
        at_kill = commits.total()
        restarted = time.monotonic()
        second = _worker(bench, config, "kill-2", topics.environment)
        try:
            done = wait_until(lambda: commits.total() >= count, 180, every=0.1)
            recovery = time.monotonic() - restarted
        finally:
            second.stop()
        records = read_back(
            bench.bootstrap, [topics.output, topics.dead_letter], PARTITIONS, 2 * count
        )
    finally:
        commits.close()
        delete_topics(bench.bootstrap, topics.all)
    ids = [record.request_id for record in records]
    unique = set(ids) & {f"kill-{i}".encode() for i in range(count)}
    how = (
        f"{count:,} one-row requests with ids; SIGKILL once {at_kill:,} were committed; a new "
        f"worker, started at once, {'finished' if done else 'had NOT finished'} "
        f"{recovery:.1f} s later (group rejoin included); ids read back from output + dead letters"
    )
    return Sigkill(count - len(unique), len(ids) - len(set(ids)), how)
