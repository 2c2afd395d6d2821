"""The bare-onnxruntime reference: ``InferenceSession.run`` on the worker's batches, in a loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

__all__ = ["bare_rows_per_second"]


def bare_rows_per_second(model: Path, batches: list[npt.NDArray[np.float32]]) -> float:
    """Rows per second of ``session.run`` over ``batches``, with the worker's session options."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    session.run(None, {name: batches[0]})  # warm-up: first-run allocations
    started = time.perf_counter()
    for batch in batches:
        session.run(None, {name: batch})
    seconds = time.perf_counter() - started
    return sum(len(batch) for batch in batches) / seconds
