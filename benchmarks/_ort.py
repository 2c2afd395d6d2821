"""The compute limit: bare ``InferenceSession.run`` on 1,000-row batches of the same rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = ["bare_rows_per_second"]

_AT_LEAST_S = 1.0


def bare_rows_per_second(
    model: Path, batch: npt.NDArray[np.float32], *, passes: int, seconds: float
) -> float:
    """Rows per second of ``session.run`` on ``batch`` (onnxruntime's default session options:
    unlike the worker's, its pool threads spin between runs, the fastest a lone process gets),
    run ``passes`` times and for at least a second, at most ``seconds``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})  # warm-up: first-run allocations
    started = time.perf_counter()
    runs, elapsed = 0, 0.0
    while (runs < passes or elapsed < _AT_LEAST_S) and (runs == 0 or elapsed < seconds):
        session.run(None, {name: batch})
        runs += 1
        elapsed = time.perf_counter() - started
    return runs * len(batch) / elapsed
