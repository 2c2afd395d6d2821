"""Where `headrace demo` finds its configs and sample data."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from stream.cli.main import main
from stream.cli.samples import find_project

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
