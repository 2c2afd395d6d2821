"""The Quix Streams peer: headrace's job written the way a Quix Streams user would write it.

``app.dataframe(topic).apply(infer).to_topic(out)`` with the Application's defaults
(at-least-once, a consumer group, commits every 5 s), the same onnxruntime model, and results
in headrace's format carrying ``out.*`` only. J requests go through Quix's JSON deserializer
and serializer; Arrow requests through a bytes-level deserializer that decodes the Arrow IPC
stream and a serializer that encodes the result table.

It runs in its own virtualenv (``.venv-quix`` from ``benchmarks/requirements-quix.txt``) so
that Quix's pins never touch headrace's: it imports quixstreams, onnxruntime, pyarrow and
numpy, never headrace. ``python benchmarks/quix_app.py BOOTSTRAP INPUT OUTPUT GROUP MODEL
{json,arrow} COUNT STATUS`` stops by itself once it has run the model for ``COUNT`` requests
(or after 10 minutes) and writes its timings to the JSON file ``STATUS``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pyarrow as pa
from quixstreams import Application  # type: ignore[import-not-found]  # in .venv-quix only
from quixstreams.models.serializers import (  # type: ignore[import-not-found]
    Deserializer,
    SerializationContext,
    Serializer,
)

_GIVE_UP_S = 600.0


class ArrowDeserializer(Deserializer):  # type: ignore[misc]  # Any here: see the imports
    """An Arrow IPC stream message as a table."""

    def __call__(self, value: bytes, ctx: SerializationContext) -> pa.Table:
        return pa.ipc.open_stream(value).read_all()


class ArrowSerializer(Serializer):  # type: ignore[misc]  # Any here: see the imports
    """A table as one Arrow IPC stream message."""

    def __call__(self, value: pa.Table, ctx: SerializationContext) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return bytes(sink.getvalue().to_pybytes())


class Model:
    """The onnxruntime session, and the moment it served the ``count``-th request."""

    def __init__(self, path: str, count: int, app: Application) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = f"out.{self._session.get_outputs()[0].name}"
        self._app = app
        self._left = count
        self.first = 0.0
        self.last = 0.0

    def records(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A pandas-records request in, its pandas-records result out."""
        rows = np.asarray([record["tensor"] for record in value], dtype=np.float32)
        return [{self._output: row} for row in self._run(rows).tolist()]

    def table(self, value: pa.Table) -> pa.Table:
        """An Arrow request in, its Arrow result out."""
        tensor = value.column("tensor").combine_chunks()
        rows = tensor.flatten().to_numpy().reshape(len(tensor), -1)
        result = self._run(rows)
        offsets = np.arange(0, result.size + 1, result.shape[1], dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(result.ravel()))
        return pa.table({self._output: column})

    def _run(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        result: npt.NDArray[np.float32] = self._session.run(None, {self._input: rows})[0]
        if not self.first:
            self.first = time.time()
        self._left -= 1
        if self._left == 0:
            self.last = time.time()
            self._app.stop()
        return result


def main(argv: list[str]) -> int:
    bootstrap, source, target, group, model_path, kind, count, status = argv
    app = Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",  # the input topic is filled before the app starts
        consumer_extra_config={"session.timeout.ms": 6000},  # the embedded broker's join
        loglevel="WARNING",
        state_dir=str(Path(status).parent / f"quix-state-{group}"),
    )
    model = Model(model_path, int(count), app)
    infer: Callable[[Any], Any]
    if kind == "json":
        inputs = app.topic(source, value_deserializer="json")
        outputs = app.topic(target, value_serializer="json")
        infer = model.records
    else:
        inputs = app.topic(source, value_deserializer=ArrowDeserializer())
        outputs = app.topic(target, value_serializer=ArrowSerializer())
        infer = model.table
    sdf = app.dataframe(inputs)
    sdf = sdf.apply(infer)
    sdf.to_topic(outputs)
    give_up = threading.Timer(_GIVE_UP_S, app.stop)
    give_up.daemon = True
    give_up.start()
    app.run()
    stopped = time.time()
    give_up.cancel()
    Path(status).write_text(
        json.dumps({"first": model.first, "last": model.last, "stopped": stopped})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
