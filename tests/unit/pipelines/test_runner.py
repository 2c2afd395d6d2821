"""Running steps: retries with backoff, timeouts that abandon the attempt, permanent errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from pipelines.errors import SchemaError, StepError, StepTimeout
from pipelines.frame import StepContext
from pipelines.runner import (
    MAX_BACKOFF_S,
    BudgetSpent,
    Guarded,
    Saturated,
    Stopped,
    Watch,
    backoff_delay,
    watching,
)
from pipelines.steps.base import Cancel

if TYPE_CHECKING:
    from conftest import FakeSleep, Workspace

    from pipelines.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[3]

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


def _slow_pipeline(
    ws: Workspace, fake_sleep: FakeSleep, **step: int
) -> tuple[Pipeline, set[threading.Thread]]:
    """A pipeline of the slow ONNX model, and the threads that building it started."""
    before = set(threading.enumerate())
    pipeline = ws.pipeline([ws.model_step("slow", ws.slow_model(), **step)], sleep=fake_sleep)
    return pipeline, set(threading.enumerate()) - before


def test_long_onnx_run_is_terminated_on_the_callers_thread(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """An ONNX run past its timeout is terminated where it runs (no helper thread, no thread
    left behind) and the next call is served."""
    pipeline, started_threads = _slow_pipeline(ws, fake_sleep, timeout_ms=200, retries=0)
    assert not started_threads
    x = pa.array([[1.0] * 16, [2.0] * 16], pa.list_(pa.float32()))
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="ran past its timeout of 200 ms and was terminated"):
        pipeline.infer(pa.table({"x": x, "n": [10**12, 1]}))
    assert time.monotonic() - started < 1.5
    assert not [t for t in threading.enumerate() if t.name == "headrace-step-slow"]
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


# --- bounded cost of a hanging step ----------------------------------------------------------


class _Hang:
    """A python-like leaf that blocks until ``release`` is set, then returns its input."""

    name = "hang"
    kind = "python"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, data: int, context: StepContext, cancel: Cancel, /) -> int:
        self.started.set()
        self.release.wait(10)
        return data


class _FastClock:
    """Monotonic seconds running ``speed`` times faster than real time, from zero."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.start = time.monotonic()

    def __call__(self) -> float:
        return (time.monotonic() - self.start) * self.speed


def _guarded(leaf: _Hang, **options: int) -> Guarded[int]:
    settings = {"timeout_ms": 20, "retries": 0, "backoff_ms": 0, **options}
    return Guarded(leaf, **settings)


def _step_threads() -> int:
    return sum(thread.name == "headrace-step-hang" for thread in threading.enumerate())


def test_a_step_keeps_at_most_its_bound_of_abandoned_runs() -> None:
    """Past ``max_abandoned`` stuck runs a step fails fast, starting no thread, until one ends."""
    leaf = _Hang()
    step = _guarded(leaf, timeout_ms=100, max_abandoned=2)
    try:
        for _ in range(2):
            with pytest.raises(StepTimeout, match="ran past its timeout of 100 ms"):
                step.run(1, StepContext(), retry=False)
        threads = _step_threads()
        started = time.monotonic()
        with pytest.raises(Saturated) as caught:
            step.run(1, StepContext(), retry=False)
        assert time.monotonic() - started < 0.1  # no new run waited for its timeout
        assert caught.value.error_type == "step_timeout"
        assert "python step 'hang' has 2 abandoned runs still going" in str(caught.value)
        assert _step_threads() == threads
    finally:
        leaf.release.set()
    deadline = time.monotonic() + 3
    while _step_threads() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert step.run(7, StepContext(), retry=False) == 7


def test_keep_alive_is_called_every_half_second_while_an_attempt_waits() -> None:
    """While a step runs for 2.5 s, ``keep_alive`` is called and never a second goes without."""
    leaf = _Hang()
    clock = _FastClock(speed=5)
    calls: list[float] = []
    watch = Watch(keep_alive=lambda: calls.append(clock()), clock=clock)
    try:
        with watching(watch), pytest.raises(StepTimeout):
            _guarded(leaf, timeout_ms=2500).run(1, StepContext(), retry=False)
    finally:
        leaf.release.set()
    gaps = [later - earlier for earlier, later in zip([0.0, *calls], calls, strict=False)]
    assert len(calls) >= 3
    assert max(gaps) <= 1.0


def test_should_stop_abandons_a_running_attempt_at_once() -> None:
    """A step attempt with a 10 s timeout ends within a slice once ``should_stop`` says so."""
    leaf = _Hang()
    watch = Watch(should_stop=leaf.started.is_set)
    started = time.monotonic()
    try:
        with watching(watch), pytest.raises(Stopped):
            _guarded(leaf, timeout_ms=10_000, retries=3).run(1, StepContext(), retry=True)
    finally:
        leaf.release.set()
    assert time.monotonic() - started < 0.5


def test_a_hook_that_raises_ends_the_wait_with_its_own_error() -> None:
    """An exception from ``keep_alive`` stops the attempt and comes out of ``watching``."""

    def broken() -> None:
        raise ConnectionError("consumer closed")

    leaf = _Hang()
    watch = Watch(keep_alive=broken, clock=_FastClock(speed=10))
    try:
        with pytest.raises(ConnectionError, match="consumer closed"), watching(watch):
            _guarded(leaf, timeout_ms=10_000).run(1, StepContext(), retry=False)
    finally:
        leaf.release.set()


class _Terminable:
    """A leaf like an ONNX run: it runs until its cancel token fires, then raises."""

    name = "term"
    kind = "model"
    terminable = True

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.started = threading.Event()

    def __call__(self, data: int, context: StepContext, cancel: Cancel, /) -> int:
        self.threads.append(threading.current_thread())
        stopped = threading.Event()
        cancel.on_cancel(stopped.set)
        self.started.set()
        if stopped.wait(10):
            raise RuntimeError("terminated")
        return data


def test_a_terminable_step_runs_on_the_callers_thread_until_its_timeout() -> None:
    """No helper thread: the watchdog fires the cancel token at the timeout, and the run's own
    error becomes a step timeout that says the run was terminated."""
    leaf = _Terminable()
    step = Guarded(leaf, timeout_ms=100, retries=1, backoff_ms=0)
    started = time.monotonic()
    with pytest.raises(StepTimeout, match="model step 'term' ran past its timeout of 100 ms"):
        step.run(1, StepContext(), retry=True)
    assert 0.19 <= time.monotonic() - started < 0.6  # two attempts of 100 ms
    assert leaf.threads == [threading.current_thread()] * 2


def test_a_terminable_step_that_returns_in_time_is_served() -> None:
    class Quick(_Terminable):
        def __call__(self, data: int, context: StepContext, cancel: Cancel, /) -> int:
            return data * 2

    assert (
        Guarded(Quick(), timeout_ms=50, retries=0, backoff_ms=0).run(4, StepContext(), retry=False)
        == 8
    )


def test_should_stop_terminates_an_inline_run_at_once() -> None:
    leaf = _Terminable()
    started = time.monotonic()
    with watching(Watch(should_stop=leaf.started.is_set)), pytest.raises(Stopped):
        Guarded(leaf, timeout_ms=10_000, retries=3, backoff_ms=0).run(1, StepContext(), retry=True)
    assert time.monotonic() - started < 0.5
    assert len(leaf.threads) == 1


def test_keep_alive_is_called_while_an_inline_run_goes_on() -> None:
    leaf = _Terminable()
    clock = _FastClock(speed=5)
    calls: list[float] = []
    watch = Watch(keep_alive=lambda: calls.append(clock()), clock=clock)
    with watching(watch), pytest.raises(StepTimeout):
        Guarded(leaf, timeout_ms=600, retries=0, backoff_ms=0).run(1, StepContext(), retry=False)
    assert len(calls) >= 3  # 3 s of watch time, a call every 0.5 s of it


def test_a_hook_that_raises_during_an_inline_run_ends_it_with_its_own_error() -> None:
    def broken() -> None:
        raise ConnectionError("consumer closed")

    watch = Watch(keep_alive=broken, clock=_FastClock(speed=10))
    with pytest.raises(ConnectionError, match="consumer closed"), watching(watch):
        Guarded(_Terminable(), timeout_ms=10_000, retries=0, backoff_ms=0).run(
            1, StepContext(), retry=False
        )


def test_an_inline_run_cut_short_by_the_budget_says_so() -> None:
    with watching(Watch(budget_s=0.05)), pytest.raises(BudgetSpent) as caught:
        Guarded(_Terminable(), timeout_ms=10_000, retries=0, backoff_ms=0).run(
            1, StepContext(), retry=False
        )
    message = str(caught.value)
    assert re.match(r"model step 'term' was terminated after \d+ ms", message)
    assert message.endswith("its serve call's time budget of 0.05 s ran out")


def test_retries_stop_where_the_time_budget_ends() -> None:
    """With 50 ms of budget, a step timing out at 30 ms is tried twice at most, not 6 times."""
    leaf = _Hang()
    started = time.monotonic()
    try:
        with watching(Watch(budget_s=0.05)), pytest.raises(StepTimeout) as caught:
            _guarded(leaf, timeout_ms=30, retries=5).run(1, StepContext(), retry=True)
    finally:
        leaf.release.set()
    assert time.monotonic() - started < 0.5
    assert caught.value.attempts <= 2
    assert caught.value.error_type == "step_timeout"


def test_an_attempt_cut_short_by_the_budget_says_so() -> None:
    """An attempt the time budget cuts before its timeout is a step_timeout naming the budget."""
    leaf = _Hang()
    try:
        with watching(Watch(budget_s=0.03)), pytest.raises(BudgetSpent) as caught:
            _guarded(leaf, timeout_ms=10_000).run(1, StepContext(), retry=False)
    finally:
        leaf.release.set()
    assert caught.value.error_type == "step_timeout"
    message = str(caught.value)
    assert re.match(r"python step 'hang' was abandoned after \d+ ms", message)
    assert message.endswith("its serve call's time budget of 0.03 s ran out")


def test_onnx_runs_abandoned_while_isolating_a_request_all_end(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """Isolating one endless ONNX run in 64 requests terminates every abandoned run's thread."""
    pipeline, _ = _slow_pipeline(ws, fake_sleep, timeout_ms=50, retries=1)
    before = set(threading.enumerate())
    rounds = [1] * 64
    rounds[40] = 10**12
    x = pa.array([[1.0] * 16] * 64, pa.list_(pa.float32()))
    batch = pipeline.serve_batch(pa.table({"x": x, "n": rounds}), [1] * 64)
    assert sorted(batch.errors) == [40]
    assert sum(len(segment.row_counts) for segment in batch.segments) == 63
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        live = set(threading.enumerate()) - before
        if len(live) <= 1:  # the step's current helper thread
            break
        time.sleep(0.01)
    assert len(live) <= 1, "terminated ONNX runs still hold their threads"
