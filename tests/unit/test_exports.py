"""The public names of the `pipelines` package."""

import pipelines


def test_pipelines_exports_the_documented_names() -> None:
    """`from pipelines import ...` offers the SPEC §7 API and error tree, sorted, and all exist."""
    assert pipelines.__all__ == [
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
    for name in pipelines.__all__:
        assert getattr(pipelines, name) is not None


def test_error_tree_matches_the_spec() -> None:
    """Every error of a request is a PipelineError, and a timeout is a kind of step error."""
    for error in (
        pipelines.DecodeError,
        pipelines.SchemaError,
        pipelines.StepError,
        pipelines.ConfigError,
    ):
        assert issubclass(error, pipelines.PipelineError)
    assert issubclass(pipelines.StepTimeout, pipelines.StepError)
    assert pipelines.StepTimeout("x").error_type == "step_timeout"
