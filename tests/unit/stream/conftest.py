"""Fixtures of the worker tests: the example pipelines, loaded once per session."""

from __future__ import annotations

import pytest

from pipelines import Pipeline

from .support import CCFRAUD, FORECAST


@pytest.fixture(scope="session")
def ccfraud() -> Pipeline:
    """The ccfraud example: a 29-float ``tensor`` in, ``out.dense_1`` and a ``fraud`` check out."""
    return Pipeline.from_config(CCFRAUD)


@pytest.fixture(scope="session")
def forecast() -> Pipeline:
    """The forecast example: a custom-JSON pipeline."""
    return Pipeline.from_config(FORECAST)
