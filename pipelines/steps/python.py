"""The ``python`` step: a user's callable, table-in/table-out or custom JSON."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pyarrow as pa

from pipelines.config import PythonSpec
from pipelines.errors import ConfigError, PipelineError, StepError
from pipelines.frame import Frame, StepContext
from pipelines.steps.base import Cancel

__all__ = ["CustomJsonStep", "PythonStep", "load_callable"]

TableFunction = Callable[[pa.Table, StepContext], pa.Table]
JsonFunction = Callable[[Any, StepContext], Any]


def load_callable(function: str, base_dir: Path, key: str) -> Callable[..., Any]:
    """Import ``module.path:callable``, looking in the config's folder first, then sys.path."""
    module_name, _, attribute = function.partition(":")
    added = str(base_dir) not in sys.path
    if added:
        sys.path.insert(0, str(base_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"{key}: cannot import module '{module_name}' (looked in {base_dir} and sys.path): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            sys.path.remove(str(base_dir))
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{key}: module '{module_name}' has no attribute '{attribute}'")
    if not callable(target):
        raise ConfigError(f"{key}: '{function}' is not callable")
    return cast(Callable[..., Any], target)


class PythonStep:
    """Calls ``function(table, context)``; its table becomes ``out.*``, one row per input row.

    Python cannot interrupt a call: one past its timeout is abandoned but keeps its thread
    until it returns, and counts against the step's bound on abandoned runs meanwhile.
    """

    kind = "python"

    def __init__(self, spec: PythonSpec, function: TableFunction) -> None:
        self.spec = spec
        self._function = function

    @property
    def name(self) -> str:
        return self.spec.step_name

    def __call__(self, frame: Frame, context: StepContext, cancel: Cancel) -> Frame:
        del cancel
        result = _call(self.name, self._function, frame.current, context)
        if not isinstance(result, pa.Table):
            raise StepError(
                f"python step '{self.name}' returned {type(result).__name__}; "
                "it must return a pyarrow.Table"
            )
        if result.num_rows != frame.num_rows:
            raise StepError(
                f"python step '{self.name}' returned {result.num_rows} rows for "
                f"{frame.num_rows} input rows; it must return one row per input row"
            )
        return frame.with_outputs(result)


class CustomJsonStep:
    """Calls ``function(value, context)`` on one custom JSON request and returns its JSON."""

    kind = "python"

    def __init__(self, spec: PythonSpec, function: JsonFunction) -> None:
        self.spec = spec
        self._function = function

    @property
    def name(self) -> str:
        return self.spec.step_name

    def __call__(self, value: Any, context: StepContext, cancel: Cancel) -> Any:
        del cancel
        return _call(self.name, self._function, value, context)


def _call(
    name: str, function: Callable[[Any, StepContext], Any], data: Any, ctx: StepContext
) -> Any:
    try:
        return function(data, ctx)
    except PipelineError:
        raise
    except Exception as exc:
        raise StepError(f"python step '{name}' raised {type(exc).__name__}: {exc}") from exc
