"""The example models, sample data, configs and python steps built by scripts/build_models.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.config import load_settings
from pipelines.examples.digits import preprocess
from pipelines.examples.forecast import forecast

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "build_models.py"
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
FLOAT_LIST = pa.list_(pa.float32())


@dataclass
class Context:
    parameters: Mapping[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_models", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_models"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _session(model: bytes | Path) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_script(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_ccfraud_onnx_matches_sklearn(build: ModuleType) -> None:
    """The ccfraud graph (scaler folded in) gives scikit-learn's probabilities within 1e-5."""
    split = build.ccfraud_split()
    scaler, mlp = build.train_ccfraud(split)
    model = build.ccfraud_model(scaler, mlp)
    x_test = split.x_test.astype(np.float32)
    (onnx_scores,) = _session(model.SerializeToString()).run(None, {"tensor": x_test})
    expected = mlp.predict_proba(scaler.transform(x_test.astype(np.float64)))[:, 1]
    assert onnx_scores.shape == (len(x_test), 1)
    assert onnx_scores.dtype == np.float32
    assert np.abs(onnx_scores[:, 0] - expected).max() < 1e-5


def test_digits_onnx_matches_sklearn(build: ModuleType) -> None:
    """The digits graph picks scikit-learn's label for every held-out image, probabilities close."""
    split = build.digits_split()
    mlp = build.train_digits(split)
    model = build.digits_model(mlp)
    images = (split.x_test / 16.0).astype(np.float32)
    probabilities, labels = _session(model.SerializeToString()).run(None, {"image": images})
    expected = mlp.predict_proba(build.digits_features(split.x_test))
    assert labels.dtype == np.int64
    assert labels.shape == (len(images),)
    np.testing.assert_array_equal(labels, expected.argmax(axis=1))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_build_is_deterministic(tmp_path: Path) -> None:
    """Two runs of the build script write byte-identical files and print their sha256s."""
    first, second = tmp_path / "first", tmp_path / "second"
    printed = _run_script("--out-dir", str(first))
    _run_script("--out-dir", str(second))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 8
    for relpath in files:
        assert (first / relpath).read_bytes() == (second / relpath).read_bytes(), relpath
        assert f"{_sha256(first / relpath)}  {first / relpath}" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_pins_match_models(config: Path, tmp_path: Path) -> None:
    """Every config loads and pins the sha256 of the model file it points at."""
    settings = load_settings(config)
    for step in settings.pipeline.steps:
        if step.model is None:
            continue
        path = step.model.path
        if not path.exists():  # heavy.onnx is git-ignored: build it to compare
            _run_script("--only", path.stem, "--out-dir", str(tmp_path))
            path = tmp_path / "models" / path.name
        assert step.model.sha256 == _sha256(path)


def test_config_names_and_ports() -> None:
    """The four example configs deploy distinct pipelines on their own topics and metrics ports."""
    settings = {p.stem: load_settings(p) for p in CONFIGS}
    assert sorted(settings) == ["ccfraud", "digits", "forecast", "heavy"]
    ports = {name: s.metrics.port for name, s in settings.items()}
    assert ports == {"ccfraud": 9108, "digits": 9109, "forecast": 9110, "heavy": 9111}
    for name, s in settings.items():
        assert s.pipeline.name == name
        assert (s.kafka.input_topic, s.kafka.output_topic, s.kafka.dead_letter_topic) == (
            f"{name}-requests",
            f"{name}-results",
            f"{name}-dlq",
        )


def test_ccfraud_sample_data_schemas() -> None:
    """ccfraud_1k.arrow has 1000 rows of 29-float tensors; the JSON samples are one row each."""
    table = pa.ipc.open_file(REPO / "data" / "ccfraud_1k.arrow").read_all()
    assert table.schema == pa.schema([("tensor", FLOAT_LIST)])
    assert table.schema.metadata is None
    assert table.num_rows == 1000
    assert set(pc.list_value_length(table.column("tensor")).to_pylist()) == {29}
    for name in ("smoke_test.df.json", "high_fraud.df.json"):
        records = json.loads((REPO / "data" / name).read_text())
        assert isinstance(records, list) and len(records) == 1
        assert list(records[0]) == ["tensor"]
        assert len(records[0]["tensor"]) == 29
        assert all(isinstance(v, float) for v in records[0]["tensor"])


def test_digits_and_forecast_sample_data_schemas() -> None:
    """digits_100.arrow has 100 raw 8x8 images with their digit; forecast.json has 28 counts."""
    table = pa.ipc.open_file(REPO / "data" / "digits_100.arrow").read_all()
    assert table.schema == pa.schema([("image", pa.list_(FLOAT_LIST)), ("expected", pa.int64())])
    assert table.num_rows == 100
    images = np.array(table.column("image").to_pylist())
    assert images.shape == (100, 8, 8)
    assert images.min() == 0 and images.max() == 16
    assert set(table.column("expected").to_pylist()) == set(range(10))
    counts = json.loads((REPO / "data" / "forecast.json").read_text())["count"]
    assert len(counts) == 28
    assert all(isinstance(c, int) and c > 0 for c in counts)


def test_sample_requests_score_as_named() -> None:
    """high_fraud.df.json scores above 0.95 (the fraud check fires) and smoke_test below 0.5."""
    session = _session(REPO / "models" / "ccfraud.onnx")

    def score(name: str) -> float:
        records = json.loads((REPO / "data" / name).read_text())
        tensor = np.array([records[0]["tensor"]], dtype=np.float32)
        return float(session.run(["dense_1"], {"tensor": tensor})[0][0, 0])

    assert score("high_fraud.df.json") > 0.95
    assert score("smoke_test.df.json") < 0.5


def test_preprocess_scales_images_and_keeps_other_columns() -> None:
    """preprocess divides raw pixels by 16 into list<list<float32>> and passes other columns."""
    image = [[float((8 * row + col) % 17) for col in range(8)] for row in range(8)]
    table = pa.table({"id": ["a", "b"], "image": [image, [[16] * 8] * 8]})
    result = preprocess(table, Context())
    assert result.column_names == ["id", "image"]
    assert result.schema.field("image").type == pa.list_(FLOAT_LIST)
    assert result.column("id").to_pylist() == ["a", "b"]
    np.testing.assert_array_equal(
        np.array(result.column("image").to_pylist()),
        np.array([image, [[16] * 8] * 8], dtype=np.float32) / 16,
    )


def test_preprocess_takes_scale_parameter_chunks_slices_and_nulls() -> None:
    """The scale parameter, chunked and sliced columns and null images are handled row for row."""
    rows = [[[2, 4], [6]], None, [[8, None]], [[16]]]
    table = pa.concat_tables([pa.table({"image": rows[:2]}), pa.table({"image": rows[2:]})])
    result = preprocess(table.slice(1), Context({"scale": "2"}))
    assert result.column("image").to_pylist() == [None, [[4.0, None]], [[8.0]]]
    with pytest.raises(ValueError, match="scale"):
        preprocess(table, Context({"scale": "zero"}))
    with pytest.raises(ValueError, match="'image' column"):
        preprocess(pa.table({"tensor": [[1.0]]}), Context())


def test_preprocess_then_digits_model_reads_the_sample() -> None:
    """digits_100.arrow through preprocess and digits.onnx gets at least 95 of 100 digits right."""
    table = pa.ipc.open_file(REPO / "data" / "digits_100.arrow").read_all()
    scaled = preprocess(table, Context())
    images = np.array(scaled.column("image").to_pylist(), dtype=np.float32)
    assert images.max() == 1.0
    _, labels = _session(REPO / "models" / "digits.onnx").run(None, {"image": images})
    assert (labels == np.array(table.column("expected").to_pylist())).sum() >= 95


def test_forecast_returns_a_week() -> None:
    """forecast turns the sample counts into 7 non-negative floats that follow the weekly shape."""
    value = json.loads((REPO / "data" / "forecast.json").read_text())
    result = forecast(value, Context())
    assert isinstance(result, dict)
    week = result["forecast"]
    assert isinstance(week, list) and len(week) == 7
    assert all(isinstance(v, float) and v >= 0 for v in week)
    assert result == forecast(value, Context())
    flat = forecast({"count": [100] * 14}, Context())
    assert flat == {"forecast": [100.0] * 7}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, 3], "JSON object"),
        ({"counts": [1] * 7}, "'count' key"),
        ({"count": "1,2,3"}, "list of numbers"),
        ({"count": [1, 2, 3, 4, 5, 6]}, "at least 7"),
        ({"count": [1, 2, 3, "4", 5, 6, 7]}, "item 3"),
        ({"count": [1, 2, 3, 4, 5, 6, True]}, "item 6"),
        ({"count": [1, 2, 3, 4, 5, 6, float("nan")]}, "finite"),
    ],
)
def test_forecast_rejects_malformed_input(value: object, message: str) -> None:
    """A value that is not {"count": [>= 7 numbers]} raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        forecast(value, Context())  # type: ignore[arg-type]
