"""The example pipelines the fuzzer drives, each with its decoder, its server and a maker of
good requests; the worker's bounds, set low so that a request that slips past them is small."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines import Pipeline
from pipelines.config import ProcessingSettings
from stream.worker.decoding import Decoder
from stream.worker.serving import Server

REPO = Path(__file__).resolve().parents[2]
MAX_MESSAGE_BYTES = 1_048_576
# Low bounds, so that bombs are cheap to make and a request that slips past them is small.
LIMITS = ProcessingSettings(max_request_rows=20_000, max_decoded_bytes=4 * 1024 * 1024)


class Target:
    """One example pipeline with its decoder and server, and its good requests."""

    def __init__(self, name: str, make_good: Callable[[random.Random], pa.Table | dict]) -> None:
        self.name = name
        self.pipeline = Pipeline.from_config(REPO / "configs" / f"{name}.yaml", sleep=_no_sleep)
        self.decoder = Decoder(self.pipeline, LIMITS, MAX_MESSAGE_BYTES)
        self.server = Server(self.pipeline)
        self.make_good = make_good

    @property
    def custom(self) -> bool:
        return self.pipeline.is_custom


def _no_sleep(seconds: float) -> None:
    del seconds


def ccfraud(rng: random.Random) -> pa.Table:
    rows = rng.randint(1, 5)
    tensors = np.asarray([[rng.uniform(-5, 5) for _ in range(29)] for _ in range(rows)])
    return pa.table(
        {
            "tensor": pa.array(list(tensors.astype(np.float32)), pa.list_(pa.float32())),
            "id": pa.array([rng.randint(0, 10**6) for _ in range(rows)], pa.int64()),
        }
    )


def digits(rng: random.Random) -> pa.Table:
    rows = rng.randint(1, 3)
    images = [
        [[float(rng.randint(0, 16)) for _ in range(8)] for _ in range(8)] for _ in range(rows)
    ]
    return pa.table({"image": pa.array(images, pa.list_(pa.list_(pa.float32())))})


def forecast(rng: random.Random) -> dict:
    return {"count": [rng.randint(0, 500) for _ in range(rng.randint(7, 30))]}


def targets() -> list[Target]:
    """The three example deployments, loaded once."""
    return [Target("ccfraud", ccfraud), Target("digits", digits), Target("forecast", forecast)]
