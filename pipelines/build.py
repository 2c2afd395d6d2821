"""From a validated config to runnable steps: models opened, functions imported, checks compiled."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipelines.check import compile_check
from pipelines.config import ModelSpec, Settings, StepSpec
from pipelines.errors import ConfigError
from pipelines.runner import Chain, Guarded, abandon_limit
from pipelines.steps.base import Leaf, Step
from pipelines.steps.checks import CheckStep
from pipelines.steps.model import ModelStep
from pipelines.steps.python import CustomJsonStep, PythonStep, load_callable
from pipelines.steps.shadow import Challenger, ShadowStep
from pipelines.steps.split import SplitStep

__all__ = ["Built", "build"]

T = TypeVar("T")
JsonStep = Guarded[object]
# the model that first sees a request: step 0, or the first step of a split branch, or a champion
_ENTRY_KEY = re.compile(
    r"^pipeline\.steps\[0\](\.random_split\.branches\.\w+\[0\])*(\.shadow\.champion)?\.model$"
)


@dataclass
class Built:
    """What a pipeline is made of once its config is loaded."""

    chain: Chain
    custom_steps: list[JsonStep] = field(default_factory=list)
    models: dict[str, ModelStep] = field(default_factory=dict)  # config key -> step
    entry_model: ModelStep | None = None
    guarded: list[Guarded[Any]] = field(default_factory=list)  # every leaf, at any depth


@dataclass
class _Builder:
    settings: Settings
    sleep: Callable[[float], None] = time.sleep
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    built: Built = field(default_factory=lambda: Built(chain=Chain(())))

    @property
    def _where(self) -> str:
        return str(self.settings.source or "config")

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._where}: key '{key}': {message}")

    def chain(self, specs: Sequence[StepSpec], key: str) -> Chain:
        return Chain([self.step(spec, f"{key}[{index}]") for index, spec in enumerate(specs)])

    def step(self, spec: StepSpec, key: str) -> Step:
        if spec.model is not None:
            return self.guard(self.model(spec.model, f"{key}.model"), spec)
        if spec.python is not None:
            function = self.function(spec.python.function, f"{key}.python.function")
            if spec.python.accepts == "custom-json":
                raise self.error(
                    f"{key}.python.accepts",
                    "custom-json steps take raw JSON, so every step of their pipeline must "
                    "be a python step with accepts: custom-json",
                )
            return self.guard(PythonStep(spec.python, function), spec)
        if spec.check is not None:
            try:
                return CheckStep(compile_check(spec.check.name, spec.check.expr))
            except ConfigError as exc:
                raise self.error(f"{key}.check.expr", exc.message) from exc
        if spec.random_split is not None:
            split = spec.random_split
            branches = {
                name: self.chain(steps, f"{key}.random_split.branches.{name}")
                for name, steps in split.branches.items()
            }
            return SplitStep(split, branches, self.rng)
        assert spec.shadow is not None
        champion = spec.shadow.champion
        assert champion.model is not None
        champion_step = self.model(champion.model, f"{key}.shadow.champion.model")
        challengers = []
        for index, challenger in enumerate(spec.shadow.challengers):
            assert challenger.model is not None
            model = self.model(challenger.model, f"{key}.shadow.challengers[{index}].model")
            challengers.append(Challenger(self.guard(model, challenger), model))
        return ShadowStep(self.guard(champion_step, champion), challengers)

    def guard(self, leaf: Leaf[T], spec: StepSpec) -> Guarded[T]:
        guarded = Guarded(
            leaf,
            timeout_ms=spec.timeout_ms,
            retries=spec.retries,
            backoff_ms=spec.backoff_ms,
            max_abandoned=abandon_limit(self.settings.batching.max_rows, spec.retries),
            sleep=self.sleep,
        )
        self.built.guarded.append(guarded)
        return guarded

    def function(self, function: str, key: str) -> Callable[..., object]:
        return load_callable(function, self.settings.base_dir, f"{self._where}: key '{key}'")

    def model(self, spec: ModelSpec, key: str) -> ModelStep:
        path = Path(spec.path)
        if not path.is_file():
            raise self.error(f"{key}.path", f"model file {path} does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if spec.sha256 is not None and spec.sha256.lower() != digest:
            raise self.error(
                f"{key}.sha256",
                f"model {path} has sha256 {digest}, but the config pins {spec.sha256.lower()}; "
                "refusing to start",
            )
        step = ModelStep(spec, sha256=digest, key=key, source=self._where)
        self.built.models[key] = step
        if self.built.entry_model is None and _ENTRY_KEY.match(key):
            self.built.entry_model = step
        return step

    def custom(self, specs: Sequence[StepSpec]) -> list[JsonStep]:
        steps: list[JsonStep] = []
        for index, spec in enumerate(specs):
            key = f"pipeline.steps[{index}]"
            if spec.python is None or spec.python.accepts != "custom-json":
                raise self.error(
                    key,
                    "a pipeline whose first step accepts custom-json can only have python "
                    "steps with accepts: custom-json",
                )
            function = self.function(spec.python.function, f"{key}.python.function")
            steps.append(self.guard(CustomJsonStep(spec.python, function), spec))
        return steps


def build(
    settings: Settings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: np.random.Generator | None = None,
) -> Built:
    """Open every model, import every function and compile every check of ``settings``."""
    builder = _Builder(settings, sleep=sleep, rng=rng or np.random.default_rng())
    steps = settings.pipeline.steps
    first = steps[0].python
    if first is not None and first.accepts == "custom-json":
        builder.built.custom_steps = builder.custom(steps)
    else:
        builder.built.chain = builder.chain(steps, "pipeline.steps")
    return builder.built
