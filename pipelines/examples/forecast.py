"""A custom-JSON step: forecast the next week of daily counts.

Used by ``configs/forecast.yaml`` as ``pipelines.examples.forecast:forecast`` with
``accepts: custom-json``: it takes ``{"count": [numbers]}`` (at least one week of daily values,
oldest first) and returns ``{"forecast": [7 floats]}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol, TypeAlias

import numpy as np

__all__ = ["HORIZON", "SEASON", "forecast"]

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

SEASON = 7  # days in the weekly cycle
HORIZON = 7  # days forecast


class _Context(Protocol):
    parameters: Mapping[str, str]


def forecast(value: JsonValue, context: _Context) -> JsonValue:
    """Forecast the next 7 days as a least-squares linear trend plus the mean weekly profile.

    The trend is fitted to the whole history; the weekly profile is the mean residual of each
    day of the cycle. Deterministic; values are rounded to 3 decimals and never negative.
    Raises ``ValueError`` naming the problem when ``value`` is not ``{"count": [>= 7 numbers]}``.
    """
    counts = _counts(value)
    days = np.arange(len(counts), dtype=np.float64)
    slope, intercept = np.polyfit(days, counts, deg=1)
    residuals = counts - (intercept + slope * days)
    profile = np.array([residuals[phase::SEASON].mean() for phase in range(SEASON)])
    ahead = np.arange(len(counts), len(counts) + HORIZON)
    predicted = intercept + slope * ahead + profile[ahead % SEASON]
    return {"forecast": [round(max(float(v), 0.0), 3) for v in predicted]}


def _counts(value: JsonValue) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    if not isinstance(value, dict):
        raise ValueError(
            f'forecast expects a JSON object {{"count": [numbers]}}, got {type(value).__name__}'
        )
    if "count" not in value:
        raise ValueError(f"forecast expects a 'count' key; got keys {sorted(value)}")
    counts = value["count"]
    if not isinstance(counts, list):
        raise ValueError(f"'count' must be a list of numbers, got {type(counts).__name__}")
    if len(counts) < SEASON:
        raise ValueError(
            f"'count' needs at least {SEASON} daily values (one week), got {len(counts)}"
        )
    return np.array([_number(index, item) for index, item in enumerate(counts)])


def _number(index: int, item: JsonValue) -> float:
    if isinstance(item, bool) or not isinstance(item, int | float):
        raise ValueError(f"'count' must hold numbers; item {index} is {item!r:.60}")
    try:
        number = float(item)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"'count' must hold finite numbers; item {index} is {item!r:.60}")
    return number
