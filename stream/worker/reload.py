"""``headrace reload CONFIG``: send SIGHUP to the ``headrace run`` processes of a config."""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["find_workers", "signal_reload"]

_PROC = Path("/proc")


def find_workers(config: Path) -> list[int]:
    """Pids of ``headrace run`` processes serving ``config`` (top-level ones: a replica
    supervisor forwards the signal to its children itself)."""
    target = config.resolve()
    found: dict[int, int] = {}  # pid -> parent pid
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = (entry / "cwd").resolve()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        if _serves(argv, cwd, target):
            found[int(entry.name)] = parent
    return sorted(pid for pid, parent in found.items() if parent not in found)


def signal_reload(config: Path) -> list[int]:
    """SIGHUP every worker of ``config``; returns the pids signalled."""
    pids = find_workers(config)
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    return pids


def _serves(argv: list[bytes], cwd: Path, target: Path) -> bool:
    words = [word.decode(errors="replace") for word in argv if word]
    is_headrace = any(w.endswith("headrace") or w == "stream.cli" for w in words)
    if not is_headrace or "run" not in words:
        return False
    after = words[words.index("run") + 1 :]
    return any(
        (cwd / word).resolve() == target for word in after if word.endswith((".yaml", ".yml"))
    )
