"""`headrace demo`, the main job: the example pipelines over its own broker, then nothing left."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from stream.worker.processes import headrace_command

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, exited but not reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _started_pids(output: str) -> list[int]:
    """The broker's and the workers' pids, as the demo prints them."""
    broker = re.search(r"^\s+broker .*, pid (\d+)", output, re.MULTILINE)
    workers = re.search(r"^\s+workers\s+pids (.*?) \(", output, re.MULTILINE)
    assert broker is not None and workers is not None, output
    return [int(broker.group(1)), *map(int, re.findall(r"\w+ (\d+)", workers.group(1)))]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_demo_serves_every_sample_and_stops_what_it_started(tmp_path: Path) -> None:
    """`headrace demo --project DIR`, run from another folder (as from a non-editable install),
    exits 0 within 90 s with ccfraud results and typed dead letters, and no broker or worker it
    started is left running."""
    completed = subprocess.run(
        headrace_command("demo", "--project", str(REPO)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr

    assert "ccfraud: ccfraud-requests -> ccfraud-results" in output
    high_fraud = re.search(r"^\s+high-fraud\s+pandas-records .*", output, re.MULTILINE)
    assert high_fraud is not None and high_fraud.group(0).rstrip().endswith("True"), output
    assert "arrow-file-1k" in output and "oip-3-rows" in output
    assert "digits: digits-requests -> digits-results" in output
    assert "forecast: forecast-requests -> forecast-results" in output

    expected = [
        ("garbage-bytes", "decode_error"),
        ("tensor-28-floats", "schema_error"),
        ("three-days-only", "step_error"),
        ("deadline-passed", "expired"),  # sent after its x-deadline: never run
    ]
    message = r"ccfraud/deadline-passed: expired: deadline \S+Z \(x-deadline\) passed \d+ ms"
    assert re.search(message, output), output
    assert "5 of them malformed and 1 sent after its x-deadline on purpose" in output
    for key, error_type in expected:
        line = re.search(rf"^\s+\w+\s+{key}\s+(\w+)", output, re.MULTILINE)
        assert line is not None and line.group(1) == error_type, output
    assert re.search(r"^throughput\s+\d+ requests, [\d,]+ rows", output, re.MULTILINE), output

    pids = _started_pids(output)
    assert len(pids) == 4
    assert not [pid for pid in pids if _alive(pid)], f"left running: {pids}"
