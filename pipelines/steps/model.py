"""The ``model`` step: an ONNX model run with onnxruntime, one session per process."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import structlog

from pipelines.columns import repeat_text
from pipelines.config import ModelSpec
from pipelines.errors import ConfigError, SchemaError, StepError, StepTimeout
from pipelines.frame import Frame, StepContext
from pipelines.steps.base import Cancel
from pipelines.tensors import (
    TensorSpec,
    column_to_tensor,
    conform_column,
    one_array,
    tensor_to_column,
)

__all__ = ["ModelStep"]

_log = structlog.get_logger("headrace.model")

# onnxruntime's pool threads sleep between runs (spinning is off, see _open_session), and a run
# wakes them for each operator it splits. Where a whole batch takes well under a millisecond
# that waking costs more than the threads save (measured on 2 cores, 1,000 rows of the
# ccfraud MLP: 64 us a run with the pool and 78 us of CPU, 48 us on the calling thread alone),
# so warm-up times both for models this fast. The calling thread alone is kept unless the
# pool is clearly faster: it leaves the other cores to Kafka and to the worker's other work.
_TRY_ALONE_UNDER_S = 0.002
_ALONE_WITHIN = 1.1  # the calling thread alone may be up to 10% slower than the pool
_TIMED_RUNS = 7

_ONNX_TYPES: dict[str, np.dtype[np.generic]] = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in {
        "float": "float32",
        "double": "float64",
        "float16": "float16",
        "int8": "int8",
        "int16": "int16",
        "int32": "int32",
        "int64": "int64",
        "uint8": "uint8",
        "uint16": "uint16",
        "uint32": "uint32",
        "uint64": "uint64",
        "bool": "bool",
    }.items()
}


class ModelStep:
    """Runs an ONNX model on the frame's columns; every output becomes ``out.<name>``."""

    kind = "model"
    # a run stops at its cancel token (RunOptions.terminate): the runner runs it on the
    # caller's thread under its watchdog instead of handing each batch to a helper thread
    terminable = True

    def __init__(self, spec: ModelSpec, *, sha256: str, key: str, source: str = "config") -> None:
        """``source`` and ``key`` (the config file and the model's dotted key) name errors."""
        self.spec = spec
        self.sha256 = sha256
        self._where = f"{source}: key '{key}.path'"
        self._session = _open_session(spec, self._where)
        self._threads_timed = False  # warm-up times the pool against the calling thread once
        inputs = {arg.name: _tensor_spec(arg, spec.path) for arg in self._session.get_inputs()}
        unknown = sorted(set(spec.inputs) - set(inputs))
        if unknown:
            raise ConfigError(
                f"{source}: key '{key}.inputs': model '{spec.name}' has no input {unknown[0]!r}; "
                f"its inputs are {sorted(inputs)}"
            )
        self.inputs = tuple(
            (spec.inputs.get(name, name), tensor) for name, tensor in inputs.items()
        )
        self.outputs = tuple(_tensor_spec(arg, spec.path) for arg in self._session.get_outputs())
        self._output_names = [tensor.name for tensor in self.outputs]
        self._last_model = json.dumps({"model_name": spec.name, "model_sha": sha256})

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    @property
    def input_schema(self) -> pa.Schema:
        return pa.schema([pa.field(column, tensor.arrow_type) for column, tensor in self.inputs])

    @property
    def output_schema(self) -> pa.Schema:
        return pa.schema([pa.field(tensor.name, tensor.arrow_type) for tensor in self.outputs])

    def conform(self, table: pa.Table) -> pa.Table:
        """``table`` with this model's input columns cast to the declared types and checked."""
        for column, tensor in self.inputs:
            index = table.schema.get_field_index(column)
            if index < 0:
                raise SchemaError(
                    f"missing column '{column}': model '{self.name}' expects "
                    f"{tensor.describe()}; the request has columns {table.column_names}"
                )
            conformed = conform_column(table.column(index), tensor, column)
            if conformed.type != table.schema.field(index).type:
                table = table.set_column(index, column, conformed)
        return table

    def warm_up(self, rows: int = 1) -> None:
        """Run the model on ``rows`` rows of zeros shaped from its inputs (free dimensions of
        1), so that the first request does not pay onnxruntime's first-run cost.

        On a CPU with more than one core, a model whose batch runs in under 2 ms is also timed
        on the calling thread alone, and served that way unless onnxruntime's pool is more
        than 10% faster.
        """
        feeds = {
            tensor.name: np.zeros(
                (rows, *(1 if dim is None else dim for dim in tensor.shape)), tensor.dtype
            )
            for _, tensor in self.inputs
        }
        self._session.run(self._output_names, feeds)
        if not self._threads_timed and self._may_run_alone():
            self._threads_timed = True
            self._choose_threads(feeds, rows)

    @property
    def threads(self) -> int | None:
        """onnxruntime's intra-op threads: None for its own pool, 1 for the calling thread."""
        return self._session.get_session_options().intra_op_num_threads or None

    def _may_run_alone(self) -> bool:
        """Only the CPU provider runs on the caller's cores, and one core has no pool."""
        cores = os.cpu_count() or 1
        return cores > 1 and self._session.get_providers() == ["CPUExecutionProvider"]

    def _choose_threads(self, feeds: dict[str, np.ndarray], rows: int) -> None:
        outputs = self._output_names
        if _run_seconds(self._session, outputs, feeds) >= _TRY_ALONE_UNDER_S:
            return  # one more run tells a slow model: no time spent timing it further
        single = _open_session(self.spec, self._where, threads=1)
        single.run(outputs, feeds)
        pooled = alone = float("inf")
        for _ in range(_TIMED_RUNS):  # in turns, so that a busy moment slows both
            pooled = min(pooled, _run_seconds(self._session, outputs, feeds))
            alone = min(alone, _run_seconds(single, outputs, feeds))
        if alone <= pooled * _ALONE_WITHIN:
            self._session = single
        _log.info(
            "model threads chosen",
            model=self.name,
            rows=rows,
            pool_us=round(pooled * 1e6),
            calling_thread_us=round(alone * 1e6),
            threads="calling thread" if self.threads == 1 else "onnxruntime pool",
        )

    def __call__(self, frame: Frame, context: StepContext, cancel: Cancel) -> Frame:
        del context
        table = frame.current
        if frame.conformed is not self or table is not frame.inputs:
            table = self.conform(table)
        feeds = {
            tensor.name: column_to_tensor(one_array(table.column(column)), tensor)
            for column, tensor in self.inputs
        }
        options = ort.RunOptions()
        options.log_severity_level = 4  # a terminated run is expected at a timeout: no ORT error
        cancel.on_cancel(lambda: setattr(options, "terminate", True))
        try:
            results = self._session.run(self._output_names, feeds, options)
        except Exception as exc:
            if cancel.cancelled:
                raise StepTimeout(f"model '{self.name}' was terminated at its timeout") from exc
            raise StepError(f"model '{self.name}' failed: {exc}") from exc
        columns = [tensor_to_column(np.asarray(result)) for result in results]
        if any(len(column) != frame.num_rows for column in columns):
            raise StepError(
                f"model '{self.name}' returned {[len(c) for c in columns]} rows "
                f"for {frame.num_rows} input rows"
            )
        outputs = pa.Table.from_arrays(columns, names=self._output_names)
        last_model = repeat_text(self._last_model, frame.num_rows)
        return replace(frame.with_outputs(outputs), last_model=last_model)


def _run_seconds(
    session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray]
) -> float:
    started = time.perf_counter()
    session.run(outputs, feeds)
    return time.perf_counter() - started


def _open_session(spec: ModelSpec, where: str, threads: int = 0) -> ort.InferenceSession:
    """The model's session; ``threads`` intra-op threads (0: onnxruntime's default pool)."""
    available = set(ort.get_available_providers())
    providers = [p for p in spec.providers if p in available] or ["CPUExecutionProvider"]
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    # onnxruntime's pool threads spin between runs by default: in a worker that decodes,
    # encodes and talks to Kafka between model runs, that spinning takes a core from them
    # (measured: 50-60% of a core on the small model, same throughput without it)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(spec.path), sess_options=options, providers=providers)
    except Exception as exc:
        raise ConfigError(f"{where}: cannot load ONNX model {Path(spec.path)}: {exc}") from exc


def _tensor_spec(arg: ort.NodeArg, path: Path) -> TensorSpec:
    dtype = _ONNX_TYPES.get(arg.type)
    if dtype is None:
        raise ConfigError(
            f"{path}: tensor '{arg.name}' has type {arg.type}, which headrace "
            f"does not serve (supported: {sorted(_ONNX_TYPES)})"
        )
    dims = list(arg.shape or [None])
    per_row = tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in dims[1:])
    return TensorSpec(name=arg.name, dtype=dtype, shape=per_row)
