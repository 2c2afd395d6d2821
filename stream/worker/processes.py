"""Worker child processes (``headrace run CONFIG``) for the demo and the benchmark.

Each worker is a real ``python -m stream.cli.main run`` process pointed at a broker through
``HEADRACE_KAFKA__BOOTSTRAP_SERVERS``, with its logs in a file. It is stopped by pid: SIGTERM
(the worker finishes in-flight requests, commits and exits 0), then SIGKILL if it takes too long.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import IO, Self

__all__ = ["WorkerProcess", "headrace_command", "stop_on_sigterm", "worker_environment"]


class WorkerProcess:
    """One ``headrace run`` child: ``start`` it, then ``stop`` (graceful) or ``kill`` (SIGKILL).

    ``overrides`` are extra ``HEADRACE_*`` environment variables (topics, group id ...). The
    metrics server is off and the config's ``replicas`` is forced to 1: one process, one pid.
    """

    def __init__(
        self,
        config: Path,
        *,
        bootstrap: str,
        log_path: Path,
        log_level: str = "info",
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self._bootstrap = bootstrap
        self._log_level = log_level
        self._overrides = dict(overrides or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    def start(self) -> Self:
        env = worker_environment(self._bootstrap, metrics_port=0) | self._overrides
        command = headrace_command("--log-level", self._log_level, "run", str(self.config))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        return self

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of the worker's log, to show why it stopped."""
        try:
            text = self.log_path.read_bytes()[-16_384:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s for a clean exit, else SIGKILL; the exit code."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return self.returncode

    def kill(self) -> None:
        """SIGKILL now (no flush, no commit) and reap the process."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self._close_log()

    def _close_log(self) -> None:
        log, self._log = self._log, None
        if log is not None:
            log.close()


def headrace_command(*args: str) -> list[str]:
    """The argv of a ``headrace`` child process: this interpreter running ``-m stream.cli``."""
    return [sys.executable, "-m", "stream.cli", *args]


def worker_environment(bootstrap: str, *, metrics_port: int) -> dict[str, str]:
    """This process's environment for one ``headrace run`` child on ``bootstrap``.

    The child is one process (``replicas`` forced to 1) with metrics on ``metrics_port``
    (0 = off).
    """
    return os.environ | {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "HEADRACE_METRICS__PORT": str(metrics_port),
        "HEADRACE_REPLICAS": "1",
    }


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` meanwhile, so ``finally`` blocks clean up."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
