"""Where `headrace demo` finds its configs and sample data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines import load_settings
from pipelines.errors import ConfigError
from stream.cli.main import main
from stream.cli.samples import find_project, samples_for

REPO = Path(__file__).resolve().parents[4]


def test_an_explicit_project_folder_is_used(tmp_path: Path) -> None:
    """`--project DIR` wins over the current directory when it has configs/ and data/."""
    for name in ("configs", "data"):
        (tmp_path / name).mkdir()
    assert find_project(tmp_path) == tmp_path.resolve()


def test_the_current_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from a folder with configs/ and data/ (a checkout, /app in the image), that is it."""
    for name in ("configs", "data"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_project() == tmp_path.resolve()


def test_a_folder_without_the_samples_is_refused_naming_it(tmp_path: Path) -> None:
    """A folder without configs/ and data/ is a ConfigError that names the path and the fix."""
    with pytest.raises(ConfigError, match=rf"{tmp_path}.*--project DIR"):
        find_project(tmp_path)


def test_headrace_demo_exits_2_for_a_missing_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`headrace demo --project MISSING` exits 2 and says where it looked."""
    missing = tmp_path / "nowhere"
    assert main(["demo", "--project", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_the_checkout_has_the_demo_samples() -> None:
    """This repository is a valid project folder for the demo."""
    assert find_project(REPO) == REPO


def test_the_demo_sends_one_good_request_after_its_deadline() -> None:
    """ccfraud's samples hold one request like the smoke test whose x-deadline (epoch ms) has
    already passed, so the worker dead-letters it as expired; no other sample has a deadline."""
    settings = load_settings(REPO / "configs" / "ccfraud.yaml")
    samples = {s.request_id: s for s in samples_for(settings, REPO / "data")}
    late = samples["deadline-passed"]
    assert late.value == samples["smoke-test"].value and not late.malformed
    deadline = dict(late.headers)["x-deadline"]
    assert deadline.isdigit() and int(deadline) < time.time_ns() // 1_000_000
    assert late.late
    assert [s.request_id for s in samples.values() if s.deadline_ms is not None] == [
        "deadline-passed"
    ]
