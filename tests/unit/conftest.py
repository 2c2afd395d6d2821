"""Fixtures of the engine tests: deployments written into a temporary folder, tiny ONNX models.

A test describes a deployment as Python data (the ``pipeline.steps`` list and any other
section), the :class:`Workspace` writes it as YAML next to the models and python step
modules it needs, and loads it the way a user does, with ``Pipeline.from_config``.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from pipelines.pipeline import Pipeline

OPSET = [helper.make_opsetid("", 13)]
SLOW_WIDTH = 16  # features of the slow model's ``x``


class FakeSleep:
    """Records the backoff delays a pipeline asks for instead of sleeping them."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Workspace:
    """A deployment folder: ``<root>/deploy/<name>.yaml``, its modules, ``<root>/models``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.deploy = root / "deploy"
        self.models = root / "models"
        self.deploy.mkdir()
        self.models.mkdir()
        self.modules: list[str] = []

    def module(self, source: str) -> str:
        """Write ``source`` as a python step module beside the config; returns its import name.

        Each module gets a fresh name, so the module cache never hands one test another's code.
        A module may define ``HOLD = threading.Event()`` for steps that block past their
        timeout: the fixture sets it when the test ends, so no blocked thread outlives the test.
        """
        name = f"hr_steps_{uuid.uuid4().hex[:12]}"
        (self.deploy / f"{name}.py").write_text(dedent(source), encoding="utf-8")
        self.modules.append(name)
        return name

    def config(self, steps: list[dict[str, Any]], *, name: str = "unit", **sections: Any) -> Path:
        """Write a deployment config with ``steps`` and any other top-level ``sections``."""
        path = self.deploy / f"{name}.yaml"
        document = {"pipeline": {"name": name, "steps": steps}, **sections}
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    def pipeline(
        self, steps: list[dict[str, Any]], *, name: str = "unit", **options: Any
    ) -> Pipeline:
        """Write ``steps`` as a config and load it; ``options`` go to ``Pipeline``."""
        sections = {k: options.pop(k) for k in ("kafka", "processing") if k in options}
        return Pipeline.from_config(self.config(steps, name=name, **sections), **options)

    def model_path(self, file_name: str) -> str:
        """How a config beside the deployment names ``models/<file_name>``: relatively."""
        return f"../models/{file_name}"

    @staticmethod
    def model_step(name: str, path: str, **options: Any) -> dict[str, Any]:
        """A ``model`` step: model keys (sha256, inputs, providers) and step keys mixed."""
        model: dict[str, Any] = {"name": name, "path": path}
        for key in ("sha256", "inputs", "providers"):
            if key in options:
                model[key] = options.pop(key)
        return {"model": model, **options}

    @staticmethod
    def python_step(module: str, function: str, **options: Any) -> dict[str, Any]:
        """A ``python`` step: ``name`` and ``accepts`` go to the function, the rest to the step."""
        python: dict[str, Any] = {"function": f"{module}:{function}"}
        for key in ("name", "accepts"):
            if key in options:
                python[key] = options.pop(key)
        return {"python": python, **options}

    # --- models -----------------------------------------------------------------------------

    def scale_model(
        self,
        file_name: str = "scale.onnx",
        *,
        factor: float = 2.0,
        width: int = 3,
        input_name: str = "x",
    ) -> str:
        """``x float32[N, width]`` to ``y = factor * x`` (same shape) and ``total = sum(y) [N]``.

        Written to ``models/<file_name>``; returns the path a config beside it names.
        """
        graph = helper.make_graph(
            [
                helper.make_node("Mul", [input_name, "factor"], ["y"]),
                helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0),
            ],
            "scale",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", width])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width]),
                helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
            ],
            initializer=[
                numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor"),
                numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            ],
        )
        return self._save(graph, file_name)

    def count_model(self, file_name: str = "count.onnx") -> str:
        """``ids int64[N] -> next = ids + 1 int64[N]``: a model with an integer input."""
        graph = helper.make_graph(
            [helper.make_node("Add", ["ids", "one"], ["next"])],
            "count",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
            [helper.make_tensor_value_info("next", TensorProto.INT64, ["N"])],
            initializer=[numpy_helper.from_array(np.array(1, dtype=np.int64), "one")],
        )
        return self._save(graph, file_name)

    def image_model(self, file_name: str = "image.onnx") -> str:
        """``image float32[N, 8, 8] -> total float32[N]``, the sum of its 64 pixels."""
        graph = helper.make_graph(
            [helper.make_node("ReduceSum", ["image", "axes"], ["total"], keepdims=0)],
            "image",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8])],
            [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
            initializer=[numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")],
        )
        return self._save(graph, file_name)

    def slow_model(self, file_name: str = "slow.onnx") -> str:
        """``x float32[N, 16], n int64[N] -> y float32[N, 16]``: ``max(n)`` rounds of a matmul.

        One round takes microseconds; ``n = 10**12`` runs for hours unless terminated.
        """
        body = helper.make_graph(
            [
                helper.make_node("MatMul", ["x_in", "w"], ["product"]),
                helper.make_node("Tanh", ["product"], ["x_out"]),
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            ],
            "round",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("x_in", TensorProto.FLOAT, ["N", SLOW_WIDTH]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("x_out", TensorProto.FLOAT, ["N", SLOW_WIDTH]),
            ],
        )
        graph = helper.make_graph(
            [
                helper.make_node("ReduceMax", ["n"], ["rounds"], keepdims=0),
                helper.make_node(
                    "Constant",
                    [],
                    ["keep_going"],
                    value=helper.make_tensor("true", TensorProto.BOOL, [], [True]),
                ),
                helper.make_node("Loop", ["rounds", "keep_going", "x"], ["y"], body=body),
            ],
            "slow",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SLOW_WIDTH]),
                helper.make_tensor_value_info("n", TensorProto.INT64, ["N"]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SLOW_WIDTH])],
            initializer=[numpy_helper.from_array(np.eye(SLOW_WIDTH, dtype=np.float32) * 0.5, "w")],
        )
        return self._save(graph, file_name)

    def _save(self, graph: onnx.GraphProto, file_name: str) -> str:
        model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
        onnx.checker.check_model(model)
        onnx.save(model, self.models / file_name)
        return self.model_path(file_name)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh deployment folder; blocked python steps are released when the test ends."""
    workspace = Workspace(tmp_path)
    yield workspace
    for name in workspace.modules:
        module = sys.modules.pop(name, None)
        hold = getattr(module, "HOLD", None)
        if isinstance(hold, threading.Event):
            hold.set()


@pytest.fixture
def fake_sleep() -> FakeSleep:
    """A ``sleep`` for ``Pipeline(..., sleep=...)`` that records backoff delays, instantly."""
    return FakeSleep()
