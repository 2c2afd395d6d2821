"""headrace pipelines: the step chain, transport-free (Arrow tables in, Arrow tables out).

from pipelines import Pipeline
pipeline = Pipeline.from_config("configs/ccfraud.yaml")
result = pipeline.infer(dataframe)
"""

import typing

from pipelines.config import Settings, load_settings
from pipelines.errors import (
    ConfigError,
    DecodeError,
    Expired,
    OutputError,
    PipelineError,
    SchemaError,
    StepError,
    StepTimeout,
    TooLarge,
)
from pipelines.frame import StepContext

if typing.TYPE_CHECKING:
    from pipelines.pipeline import Pipeline

__all__ = [
    "ConfigError",
    "DecodeError",
    "Expired",
    "OutputError",
    "Pipeline",
    "PipelineError",
    "SchemaError",
    "Settings",
    "StepContext",
    "StepError",
    "StepTimeout",
    "TooLarge",
    "load_settings",
]


def __getattr__(name: str) -> object:
    # The step chain loads onnxruntime: only code that builds a Pipeline pays for it, so the
    # client SDK and `headrace --help` can read configs and formats without it.
    if name == "Pipeline":
        from pipelines.pipeline import Pipeline  # noqa: PLC0415

        return Pipeline
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
