"""headrace pipelines: the step chain, transport-free (Arrow tables in, Arrow tables out).

from pipelines import Pipeline
pipeline = Pipeline.from_config("configs/ccfraud.yaml")
result = pipeline.infer(dataframe)
"""

from pipelines.config import Settings, load_settings
from pipelines.errors import (
    ConfigError,
    DecodeError,
    OutputError,
    PipelineError,
    SchemaError,
    StepError,
    StepTimeout,
    TooLarge,
)
from pipelines.frame import StepContext
from pipelines.pipeline import Pipeline

__all__ = [
    "ConfigError",
    "DecodeError",
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
