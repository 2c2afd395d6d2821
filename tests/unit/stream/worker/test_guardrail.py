"""The guardrail: a model failing request after request stops the worker's intake."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from structlog.testing import capture_logs

from pipelines import Pipeline
from pipelines.config import load_settings
from tests.unit.stream.support import REPO, tensor

from .rig import INTERVAL, WAIT, Rig, make_rig, offsets

# A python step that raises on every row whose id is negative: a "model" broken for them.
JUDGE = textwrap.dedent(
    """
    import pyarrow.compute as pc


    def run(table, context):
        if pc.any(pc.less(table["id"], 0)).as_py():
            raise ValueError("weights are NaN")
        return table.select(["dense_1"])
    """
)
MODEL: dict[str, Any] = {"model": {"name": "ccfraud", "path": str(REPO / "models/ccfraud.onnx")}}
CHECK: dict[str, Any] = {"check": {"name": "fraud", "expr": "out.dense_1[0] > 0.9"}}


def _write(config: Path, *, broken: bool) -> None:
    """The ccfraud deployment, with the judging step when ``broken``."""
    steps = [MODEL, CHECK]
    if broken:
        module = f"judge_{uuid.uuid4().hex[:8]}"  # fresh: python caches modules by name
        (config.parent / f"{module}.py").write_text(JUDGE, encoding="utf-8")
        steps.insert(1, {"python": {"name": "judge", "function": f"{module}:run"}, "retries": 0})
    settings = {"pipeline": {"name": "ccfraud", "steps": steps}, "metrics": {"port": 0}}
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A deployment config whose pipeline fails every request with a negative id."""
    path = tmp_path / "ccfraud.yaml"
    _write(path, broken=True)
    return path


def _rig(config: Path, limit: int) -> Rig:
    pipeline = Pipeline(load_settings(config))
    processing = {"max_consecutive_failures": limit}
    return make_rig(pipeline, config=config, input_partitions=1, processing=processing)


def _request(row_id: int) -> bytes:
    return orjson.dumps([{"tensor": tensor(row_id), "id": row_id}])


def _serve(rig: Rig) -> None:
    """Consume, serve, publish and commit."""
    rig.step()
    rig.step(WAIT)
    rig.step(INTERVAL)


def test_the_guardrail_stops_consuming_and_says_why(config: Path) -> None:
    """After ``max_consecutive_failures`` step failures in a row, what was consumed is still
    published and committed, nothing more is consumed, and /readyz names the guardrail."""
    rig = _rig(config, limit=3)
    for _ in range(5):
        rig.send(_request(-1))
    with capture_logs() as logs:
        _serve(rig)
        rig.send(_request(1))
        _serve(rig)
    assert len(rig.dead_letters()) == 5
    assert rig.results() == []
    assert rig.committed() == {0: 5}
    assert rig.consumer.paused() == [rig.input(0)]
    ready, reason = rig.health.ready()
    assert not ready
    assert reason.startswith("guardrail: 3 requests in a row failed in the steps; ")
    assert "step_error in step 'judge'" in reason and "weights are NaN" in reason
    assert "reload (SIGHUP)" in reason
    assert rig.health.alive() == (True, "ok")
    assert [log["event"] for log in logs].count("guardrail tripped: stopped consuming") == 1


def test_a_served_request_resets_the_count_and_bad_input_does_not_count(config: Path) -> None:
    """Failures in a row are what counts: a result starts over, a decode error is no step
    failure."""
    rig = _rig(config, limit=3)
    for value in (_request(-1), _request(-1), b"\x00garbage", _request(1)):
        rig.send(value)
        _serve(rig)
    rig.send(_request(-1))
    rig.send(_request(-1))
    _serve(rig)
    assert rig.health.ready()[0]
    assert rig.consumer.paused() == []
    rig.send(_request(-1))
    _serve(rig)
    assert not rig.health.ready()[0]
    assert offsets(rig.results()) == [3]
    assert len(rig.dead_letters()) == 6


def test_a_reload_lifts_the_guardrail(config: Path) -> None:
    """A reload (SIGHUP) with a fixed model resumes consuming: the requests left behind on
    the topic are served and the worker is ready again."""
    rig = _rig(config, limit=2)
    for row_id in (-1, -2, -3, 4):
        rig.send(_request(row_id))
        _serve(rig)
    assert rig.committed() == {0: 2}
    _write(config, broken=False)
    rig.worker.request_reload()
    _serve(rig)
    _serve(rig)
    assert offsets(rig.results()) == [2, 3]
    assert rig.committed() == {0: 4}
    assert rig.health.ready()[0]
    assert rig.consumer.paused() == []


def test_a_limit_of_zero_turns_the_guardrail_off(config: Path) -> None:
    """With ``max_consecutive_failures: 0`` every failing request is dead-lettered."""
    rig = _rig(config, limit=0)
    for _ in range(4):
        rig.send(_request(-1))
        _serve(rig)
    assert len(rig.dead_letters()) == 4
    assert rig.health.ready()[0]


def test_a_reloaded_pipeline_is_warmed_up_before_it_takes_over(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC §6: its models run once while the old pipeline still serves."""
    rig = _rig(config, limit=0)
    old = rig.worker.pipeline
    seen: list[tuple[Pipeline, Pipeline]] = []

    def warm_up(pipeline: Pipeline, rows: int | None = None) -> list[str]:
        seen.append((pipeline, rig.worker.pipeline))
        return []

    monkeypatch.setattr(Pipeline, "warm_up", warm_up)
    _write(config, broken=False)
    rig.worker.request_reload()
    _serve(rig)
    ((warmed, serving_then),) = seen
    assert serving_then is old and warmed is rig.worker.pipeline is not old
