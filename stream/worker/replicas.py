"""``replicas: N``: N worker processes in one consumer group, stopped together by a signal.

Replica ``i`` runs with ``HEADRACE_REPLICA_INDEX=i``: its slot in the group, which names its
stable transactional id under exactly_once (:func:`stream.worker.runtime.transactional_id`)
and, with ``kafka.instance_id``, its static group membership: ``group.instance.id`` is
``<instance_id>-i`` (:func:`stream.kafka.config.group_instance_id`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import FrameType

import structlog

from stream.worker.processes import headrace_command, worker_environment
from stream.worker.runtime import REPLICA_INDEX

__all__ = ["run_replicas"]

_log = structlog.get_logger("headrace.replicas")


def run_replicas(config: Path, replicas: int, bootstrap: str, metrics_port: int) -> int:
    """Start ``replicas`` workers on ``bootstrap``; forward SIGTERM/SIGINT; 0 when all exit 0."""
    children: list[subprocess.Popen[bytes]] = []
    for index in range(replicas):
        port = metrics_port + index if metrics_port else 0
        children.append(
            subprocess.Popen(
                headrace_command("run", str(config), "--replicas", "1"),
                env=worker_environment(bootstrap, metrics_port=port) | {REPLICA_INDEX: str(index)},
            )
        )
    _log.info("replicas started", replicas=replicas, pids=[child.pid for child in children])

    def forward(signum: int, frame: FrameType | None) -> None:
        del frame
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while any(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [child.returncode for child in children]
    failed = [code for code in codes if code != 0]
    if failed:
        _log.error("replicas exited with failures", exit_codes=codes)
    return failed[0] if failed else 0
