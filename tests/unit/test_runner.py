"""Running steps: retries with backoff, timeouts that abandon the attempt, permanent errors."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from pipelines.errors import SchemaError, StepError, StepTimeout
from pipelines.runner import MAX_BACKOFF_S, backoff_delay

if TYPE_CHECKING:
    from conftest import FakeSleep, Workspace

REPO = Path(__file__).resolve().parents[2]

_FLAKY = """
    import pyarrow as pa

    calls = 0

    def flaky(table, context):
        global calls
        calls += 1
        if calls <= 2:
            raise ConnectionError(f"feature store unavailable (call {calls})")
        return pa.table({"calls": [calls] * table.num_rows})
"""

_STUCK = """
    import threading

    HOLD = threading.Event()

    def stuck(table, context):
        HOLD.wait(30)
        return table
"""


def test_step_failing_twice_is_served_with_two_retries(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """A step that fails on its first 2 calls is served on the 3rd with ``retries: 2``."""
    step = ws.python_step(ws.module(_FLAKY), "flaky", retries=2, backoff_ms=100)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    result = pipeline.infer(pa.table({"v": [1, 2]}))
    assert result.column("out.calls").to_pylist() == [3, 3]
    first, second = fake_sleep.delays
    assert 0.05 <= first < 0.15
    assert 0.1 <= second < 0.3


def test_step_failing_twice_fails_with_one_retry(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """With ``retries: 1`` the same step fails after 2 attempts, with the last error's text."""
    step = ws.python_step(ws.module(_FLAKY), "flaky", retries=1, backoff_ms=100)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    with pytest.raises(StepError) as caught:
        pipeline.infer(pa.table({"v": [1]}))
    error = caught.value
    assert error.attempts == 2
    assert error.step == "flaky"
    assert "ConnectionError: feature store unavailable (call 2)" in str(error)
    assert len(fake_sleep.delays) == 1


def test_python_step_past_its_timeout_is_abandoned_promptly(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """A step blocked far past ``timeout_ms`` raises StepTimeout after about the timeout."""
    step = ws.python_step(ws.module(_STUCK), "stuck", timeout_ms=100, retries=0)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    started = time.monotonic()
    with pytest.raises(StepTimeout) as caught:
        pipeline.infer(pa.table({"v": [1]}))
    assert time.monotonic() - started < 1.0
    error = caught.value
    assert error.error_type == "step_timeout"
    assert error.attempts == 1
    assert "python step 'stuck' ran past its timeout of 100 ms" in str(error)


def test_timeouts_are_retried_each_on_a_fresh_attempt(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """A step that always times out is tried ``1 + retries`` times, each bounded by the timeout."""
    step = ws.python_step(ws.module(_STUCK), "stuck", timeout_ms=100, retries=2)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    started = time.monotonic()
    with pytest.raises(StepTimeout) as caught:
        pipeline.infer(pa.table({"v": [1]}))
    assert time.monotonic() - started < 1.5
    assert caught.value.attempts == 3
    assert len(fake_sleep.delays) == 2


def test_a_stuck_step_does_not_keep_the_process_alive(ws: Workspace) -> None:
    """A process whose step is still sleeping after its timeout exits as soon as it is done."""
    module = ws.module("import time\n\ndef nap(table, context):\n    time.sleep(60)\n")
    config = ws.config([ws.python_step(module, "nap", timeout_ms=200, retries=0)])
    script = (
        "import sys, pyarrow as pa\n"
        "from pipelines.errors import StepTimeout\n"
        "from pipelines.pipeline import Pipeline\n"
        "pipeline = Pipeline.from_config(sys.argv[1])\n"
        "try:\n"
        "    pipeline.infer(pa.table({'v': [1]}))\n"
        "except StepTimeout as exc:\n"
        "    print(exc.error_type)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "step_timeout"
    assert time.monotonic() - started < 30


def test_long_onnx_run_is_terminated_and_its_thread_freed(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """An ONNX run past its timeout is terminated: its thread ends and the next call is served."""
    before = set(threading.enumerate())
    pipeline = ws.pipeline(
        [ws.model_step("slow", ws.slow_model(), timeout_ms=200, retries=0)], sleep=fake_sleep
    )
    workers = set(threading.enumerate()) - before
    assert workers  # the step runs its attempts on a helper thread
    x = pa.array([[1.0] * 16, [2.0] * 16], pa.list_(pa.float32()))
    started = time.monotonic()
    with pytest.raises(StepTimeout):
        pipeline.infer(pa.table({"x": x, "n": [10**12, 1]}))
    assert time.monotonic() - started < 1.5
    for worker in workers:
        worker.join(timeout=3.0)
        assert not worker.is_alive(), "the terminated run still holds its thread"
    result = pipeline.infer(pa.table({"x": x, "n": [3, 1]}))
    assert result.column("in.n").to_pylist() == [3, 1]
    assert len(result.column("out.y")[0]) == 16


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 0.0, 0.05),
        (1, 0.5, 0.1),
        (2, 0.5, 0.2),
        (3, 0.5, 0.4),
        (4, 0.0, 0.4),
        (4, 0.999, 1.1992),
        (12, 0.5, MAX_BACKOFF_S),
    ],
)
def test_backoff_doubles_per_attempt_with_half_jitter(
    attempt: int, jitter: float, expected: float
) -> None:
    """The delay is ``backoff * 2**(attempt-1)`` times 0.5..1.5 by jitter, capped at 10 s."""
    assert backoff_delay(attempt, 100, jitter=lambda: jitter) == pytest.approx(expected)


def test_backoff_jitter_stays_within_half_and_one_and_a_half_of_the_base() -> None:
    """With real randomness, delays spread over [0.5, 1.5) times the base, never outside."""
    delays = [backoff_delay(3, 100) for _ in range(2000)]
    assert all(0.2 <= delay < 0.6 for delay in delays)
    assert min(delays) < 0.25
    assert max(delays) > 0.55


def test_zero_backoff_never_waits() -> None:
    """``backoff_ms: 0`` retries at once."""
    assert backoff_delay(5, 0) == 0.0


def test_schema_error_in_a_later_step_is_not_retried(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """A SchemaError is permanent: one attempt, no backoff, even with retries configured."""
    module = ws.module(
        """
        import pyarrow as pa

        calls = 0

        def rename(table, context):
            global calls
            calls += 1
            return pa.table({"z": table.column("raw")})
        """
    )
    pipeline = ws.pipeline(
        [
            ws.python_step(module, "rename", retries=2),
            ws.model_step("scale", ws.scale_model(), retries=2),
        ],
        sleep=fake_sleep,
    )
    with pytest.raises(SchemaError) as caught:
        pipeline.infer(pa.table({"raw": pa.array([[1, 2, 3]], pa.list_(pa.float32()))}))
    error = caught.value
    assert error.attempts == 1
    assert error.step == "scale"
    assert "missing column 'x'" in str(error)
    assert fake_sleep.delays == []
    assert sys.modules[module].calls == 1
