"""The tools side by side, each started on a run's pre-filled topics (see ``Bench.measure``).

- ``headrace``: a ``headrace run`` worker process (one), configured as the bench config says.
- ``quix``: ``benchmarks/quix_app.py`` with the Quix Streams virtualenv's Python.
- ``loop``: ``benchmarks._loop``, the minimal at-least-once micro-batching loop.
- ``raw``: ``benchmarks._copy``, consume + re-produce of the same bytes (no model).

A run is finished when the worker has committed every request, or when a peer process has
exited (each exits once it has served every request, flushed and committed).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from benchmarks._harness import (
    PARTITIONS,
    REPO,
    Bench,
    Running,
    Start,
    Topics,
    Workload,
    bench_config,
    process_cpu_seconds,
)
from benchmarks._kafka import Commits, Record
from stream.worker.processes import WorkerProcess

__all__ = ["TOOLS", "quix_python"]

_QUIX_APP = REPO / "benchmarks" / "quix_app.py"


def _create_times(results: list[Record]) -> tuple[float, float] | None:
    """The first and the last result's CreateTime, in seconds."""
    if not results:
        return None
    stamps = [record.timestamp_ms for record in results]
    return min(stamps) / 1000, max(stamps) / 1000


class _Worker:
    """A ``headrace run`` process; finished once its group committed every request."""

    def __init__(self, bench: Bench, workload: Workload, topics: Topics) -> None:
        config = bench_config(workload.model, bench.log_dir)
        self._requests = workload.requests
        self._commits = Commits(bench.bootstrap, topics.group_id, topics.input, PARTITIONS)
        self._worker = WorkerProcess(
            config,
            bootstrap=bench.bootstrap,
            log_path=bench.log_dir / f"{topics.group_id}.log",
            log_level="warning",
            overrides=topics.environment,
        ).start()
        self._served = False

    def finished(self) -> bool:
        self._served = self._served or self._commits.total() >= self._requests
        return self._served or not self._worker.running()

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self._worker.pid)

    def stop(self) -> None:
        try:
            self._worker.stop()
        finally:
            self._commits.close()

    def times(self, results: list[Record]) -> tuple[float, float] | None:
        return _create_times(results)

    def failure(self) -> str:
        if self._served:
            return ""
        code = self._worker.returncode
        return f"worker exited ({code}): {self._worker.log_tail(5)}" if code is not None else ""


class _Peer:
    """A peer process that exits by itself once it has served every request."""

    def __init__(self, command: list[str], log_path: Path, cwd: Path) -> None:
        self._log: IO[bytes] = log_path.open("ab")
        self.log_path = log_path
        self._process = subprocess.Popen(
            command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._exited_cpu: float | None = None

    def finished(self) -> bool:
        if self._exited_cpu is not None:
            return True
        # exited but not reaped: its /proc entry still holds the final CPU figure
        exited = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if exited is None:
            return False
        self._exited_cpu = process_cpu_seconds(self._process.pid)
        self._process.wait()
        return True

    def cpu_seconds(self) -> float | None:
        if self._exited_cpu is not None:
            return self._exited_cpu
        return process_cpu_seconds(self._process.pid)

    def stop(self) -> None:
        if self._exited_cpu is None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def times(self, results: list[Record]) -> tuple[float, float] | None:
        return _create_times(results)

    def failure(self) -> str:
        code = self._process.returncode
        if code in (0, None):
            return ""
        tail = self.log_path.read_bytes()[-2000:].decode("utf-8", "replace").strip()
        return f"exited ({code}): {' | '.join(tail.splitlines()[-3:])}"


class _Quix(_Peer):
    """The Quix Streams app. Quix stamps each result with its request's timestamp, so the
    app itself records when it ran the model for the last request."""

    def __init__(self, bench: Bench, workload: Workload, topics: Topics) -> None:
        python = quix_python()
        if python is None:
            raise RuntimeError("no Quix Streams virtualenv (.venv-quix): `make bench` creates it")
        self._status = bench.log_dir / f"{topics.group_id}.json"
        command = [
            str(python),
            str(_QUIX_APP),
            bench.bootstrap,
            topics.input,
            topics.output,
            topics.group_id,
            str(workload.model_path),
            workload.wire,
            str(workload.requests),
            str(self._status),
        ]
        super().__init__(command, bench.log_dir / f"{topics.group_id}.log", bench.log_dir)

    def times(self, results: list[Record]) -> tuple[float, float] | None:
        del results
        try:
            status = json.loads(self._status.read_text())
            first, last = float(status["first"]), float(status["last"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (first, last) if first and last else None


def _loop(bench: Bench, workload: Workload, topics: Topics) -> Running:
    command = [
        sys.executable,
        "-m",
        "benchmarks._loop",
        bench.bootstrap,
        topics.input,
        topics.output,
        topics.group_id,
        str(workload.requests),
        str(workload.model_path),
        workload.wire,
    ]
    return _Peer(command, bench.log_dir / f"{topics.group_id}.log", REPO)


def _raw(bench: Bench, workload: Workload, topics: Topics) -> Running:
    command = [
        sys.executable,
        "-m",
        "benchmarks._copy",
        bench.bootstrap,
        topics.input,
        topics.output,
        topics.group_id,
        str(workload.requests),
    ]
    return _Peer(command, bench.log_dir / f"{topics.group_id}.log", REPO)


def quix_python() -> Path | None:
    """The Quix Streams virtualenv's Python: ``$HEADRACE_BENCH_QUIX_PYTHON``, else
    ``.venv-quix/bin/python``; None when neither exists."""
    found = os.environ.get("HEADRACE_BENCH_QUIX_PYTHON")
    path = Path(found) if found else REPO / ".venv-quix" / "bin" / "python"
    return path if path.exists() else None


TOOLS: dict[str, Start] = {"headrace": _Worker, "quix": _Quix, "loop": _loop, "raw": _raw}
