"""The public names of every package, pinned by introspection rather than by hand-kept lists."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import pipelines
import stream
from stream import errors

PACKAGES = sorted(
    ["pipelines", "stream"]
    + [
        info.name
        for package in (pipelines, stream)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        if info.ispkg
    ]
)


def _public(module: ModuleType) -> set[str]:
    """What a reader of the package sees: names not starting with _, less its sub-modules."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }


@pytest.mark.parametrize("name", PACKAGES)
def test_package_exports_what_it_defines(name: str) -> None:
    """Each package's `__all__` lists every public name it holds, once, and each one exists."""
    package = importlib.import_module(name)
    exported = package.__all__
    assert len(exported) == len(set(exported))
    assert _public(package) <= set(exported)
    for public in exported:
        assert getattr(package, public) is not None  # lazy names (pipelines.Pipeline) too


@pytest.mark.parametrize("name", PACKAGES)
def test_exports_come_from_inside_the_package(name: str) -> None:
    """A package re-exports its own classes and functions, not a dependency's."""
    package = importlib.import_module(name)
    root = name.split(".", maxsplit=1)[0]
    for exported in package.__all__:
        value = getattr(package, exported)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith(f"{root}."), (exported, value.__module__)


@pytest.mark.parametrize("name", PACKAGES)
def test_every_package_says_what_lives_there(name: str) -> None:
    """Each package opens with a docstring of at least one paragraph (SPEC §12)."""
    doc = importlib.import_module(name).__doc__ or ""
    assert len(doc.split()) >= 12, name


def test_stream_offers_the_spec_client_api() -> None:
    """`import stream` gives the SPEC §7 calls, their errors and the base of stream's errors."""
    for name in ("connect", "BatchInferenceClient", "InferenceFailed", "InferenceTimeout"):
        assert name in stream.__all__
    for error in (stream.InferenceFailed, stream.InferenceTimeout, stream.KafkaUnavailable):
        assert issubclass(error, stream.StreamError)
    assert issubclass(stream.InferenceTimeout, TimeoutError)
    assert issubclass(stream.InferenceFailed, RuntimeError)


def test_pipelines_offers_the_spec_api() -> None:
    """`from pipelines import ...` offers the SPEC §7 API and its error tree."""
    for name in ("Pipeline", "PipelineError", "DecodeError", "SchemaError", "StepError"):
        assert name in pipelines.__all__


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


def test_every_stream_error_is_in_the_tree() -> None:
    """Every exception class defined anywhere in `stream` derives from `StreamError`."""

    found = []
    for info in pkgutil.walk_packages(stream.__path__, "stream."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found.append(value)
    assert found, "stream defines its errors in stream.errors"
    assert all(issubclass(error, errors.StreamError) for error in found)
    assert all(error.__module__ == "stream.errors" for error in found)


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import stream", ("onnxruntime", "stream.worker")),
        (
            "import sys; sys.argv = ['headrace', '--help']\n"
            "from stream.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass",
            ("onnxruntime", "stream.worker"),
        ),
    ],
    ids=["import-stream", "headrace-help"],
)
def test_light_entry_points_load_no_model_runtime(code: str, absent: tuple[str, ...]) -> None:
    """The client import and `headrace --help` load neither onnxruntime nor the worker."""
    check = f"{code}\nimport sys\nprint('loaded:', [m for m in {absent!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "loaded: []"
