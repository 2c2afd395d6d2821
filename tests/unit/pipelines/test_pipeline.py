"""``Pipeline``: infer's types and row order, serve's isolation of bad requests, the version."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pyarrow import ipc

import pipelines.steps.model as model_module
from pipelines.errors import DecodeError, PipelineError, StepError, StepTimeout
from pipelines.pipeline import BatchResult, Pipeline, Stopped
from pipelines.runner import abandon_limit

if TYPE_CHECKING:
    from conftest import FakeSleep, Workspace

REPO = Path(__file__).resolve().parents[3]
FLOATS = pa.list_(pa.float32())
CCFRAUD = REPO / "configs" / "ccfraud.yaml"


@pytest.fixture(scope="module")
def ccfraud() -> Pipeline:
    return Pipeline.from_config(CCFRAUD)


def _tensors(count: int) -> list[list[float]]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(count, 29)).round(3).tolist()


# --- infer ---------------------------------------------------------------------------------


def test_dataframe_in_dataframe_out(ccfraud: Pipeline) -> None:
    """A DataFrame request gives a DataFrame result with the same rows."""
    frame = pd.DataFrame({"tensor": _tensors(3), "id": [10, 11, 12]})
    result = ccfraud.infer(frame)
    assert isinstance(result, pd.DataFrame)
    assert list(result.columns) == [
        "time",
        "in.tensor",
        "in.id",
        "out.dense_1",
        "check_failures",
        "anomaly.fraud",
    ]
    assert result["in.id"].tolist() == [10, 11, 12]
    assert str(result["time"].dtype) == "datetime64[ms, UTC]"


def test_table_in_table_out(ccfraud: Pipeline) -> None:
    """An Arrow table request gives an Arrow table result."""
    result = ccfraud.infer(pa.table({"tensor": _tensors(2)}))
    assert isinstance(result, pa.Table)
    assert result.num_rows == 2


def test_dict_in_records_out(ccfraud: Pipeline) -> None:
    """One JSON object is a one-row request; the result is a list of one JSON record."""
    result = ccfraud.infer({"tensor": _tensors(1)[0], "id": "abc"})
    assert isinstance(result, list)
    (record,) = result
    assert record["in.id"] == "abc"
    assert isinstance(record["out.dense_1"], list)
    assert isinstance(record["out.dense_1"][0], float)
    assert record["check_failures"] in (0, 1)
    assert isinstance(record["time"], int)  # epoch milliseconds, as pandas writes them


def test_list_in_records_out(ccfraud: Pipeline) -> None:
    """A list of JSON objects gives one record per object, in order."""
    result = ccfraud.infer([{"tensor": t, "id": i} for i, t in enumerate(_tensors(4))])
    assert [record["in.id"] for record in result] == [0, 1, 2, 3]
    assert all(len(record["out.dense_1"]) == 1 for record in result)


def test_the_same_rows_give_the_same_outputs_in_every_type(ccfraud: Pipeline) -> None:
    """DataFrame, Table and JSON requests of the same rows give the same scores."""
    tensors = _tensors(3)
    table = ccfraud.infer(pa.table({"tensor": tensors})).column("out.dense_1").to_pylist()
    frame = ccfraud.infer(pd.DataFrame({"tensor": tensors}))["out.dense_1"]
    records = ccfraud.infer([{"tensor": t} for t in tensors])
    scores = [score for (score,) in table]
    assert [score for (score,) in frame] == pytest.approx(scores)
    assert [score for r in records for score in r["out.dense_1"]] == pytest.approx(scores)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_numpy_arrays_in_dataframe_cells(ccfraud: Pipeline, dtype: type[np.floating[Any]]) -> None:
    """DataFrame cells holding numpy arrays are accepted like lists."""
    tensors = _tensors(2)
    cells = pd.DataFrame({"tensor": [np.asarray(t, dtype=dtype) for t in tensors]})
    result = ccfraud.infer(cells)
    expected = ccfraud.infer(pa.table({"tensor": tensors})).column("out.dense_1").to_pylist()
    scores = [score for (score,) in result["out.dense_1"]]
    assert scores == pytest.approx([score for (score,) in expected], rel=1e-5)


def test_numpy_matrices_in_dataframe_cells(ws: Workspace) -> None:
    """8x8 numpy arrays in DataFrame cells feed an ``[N, 8, 8]`` model."""
    pipeline = ws.pipeline([ws.model_step("image", ws.image_model())])
    images = [np.full((8, 8), 0.5), np.arange(64, dtype=np.float32).reshape(8, 8)]
    result = pipeline.infer(pd.DataFrame({"image": images}))
    assert result["out.total"].tolist() == [32.0, 2016.0]


def test_output_rows_are_the_input_rows_in_order(ws: Workspace) -> None:
    """Every input row comes back once, in input order, carrying its id as ``in.id``."""
    pipeline = ws.pipeline([ws.model_step("scale", ws.scale_model())])
    ids = [f"req-{i:04d}" for i in range(500)][::-1]
    x = [[float(i), 0.0, 1.0] for i in range(500)]
    result = pipeline.infer(pd.DataFrame({"id": ids, "x": x}))
    assert result["in.id"].tolist() == ids
    assert [row[0] for row in result["out.y"]] == [2.0 * i for i in range(500)]


def test_empty_request_is_a_decode_error(ccfraud: Pipeline) -> None:
    """A request with no rows is refused as a DecodeError."""
    empty = pa.table({"tensor": pa.array([], FLOATS)})
    with pytest.raises(DecodeError, match="at least one row"):
        ccfraud.infer(empty)


def test_infer_refuses_other_types(ccfraud: Pipeline) -> None:
    """Data that is not a DataFrame, Table or JSON is a TypeError naming its type."""
    with pytest.raises(TypeError, match="not ndarray"):
        ccfraud.infer(np.zeros((1, 29)))


def test_digits_end_to_end(ws: Workspace) -> None:
    """The digits pipeline labels the sample images as their ``expected`` digit (>= 90%)."""
    pipeline = Pipeline.from_config(REPO / "configs" / "digits.yaml")
    with ipc.open_file(REPO / "data" / "digits_100.arrow") as reader:
        table = reader.read_all()
    result = pipeline.infer(table)
    expected = table.column("expected").to_pylist()
    assert result.column("in.expected").to_pylist() == expected
    labels = result.column("out.label").to_pylist()
    hits = sum(label == want for label, want in zip(labels, expected, strict=True))
    assert hits >= 90
    assert set(result.column_names) >= {"out.probabilities", "anomaly.low_confidence"}


def test_ccfraud_input_schema(ccfraud: Pipeline) -> None:
    """ccfraud's input schema is one column ``tensor: list<float>``."""
    assert ccfraud.input_schema == pa.schema([pa.field("tensor", FLOATS)])
    assert str(ccfraud.input_schema).startswith("tensor: list<item: float>")


# --- version -------------------------------------------------------------------------------


def _versioned(ws: Workspace, *, threshold: float = 5.0, factor: float = 2.0) -> Path:
    steps = [
        ws.model_step("scale", ws.scale_model(factor=factor)),
        {"check": {"name": "big", "expr": f"out.y[0] > {threshold}"}},
    ]
    return ws.config(steps)


def test_version_is_a_stable_uuid(ws: Workspace) -> None:
    """The version is a UUID, the same for two loads of one config."""
    path = _versioned(ws)
    first = Pipeline.from_config(path).version
    assert str(uuid.UUID(first)) == first
    assert Pipeline.from_config(path).version == first


def test_version_is_the_same_for_a_copy_in_another_folder(ws: Workspace) -> None:
    """A copy of the config and its model elsewhere has the same version."""
    path = _versioned(ws)
    copy = ws.root / "copy"
    shutil.copytree(ws.deploy, copy / "deploy")
    shutil.copytree(ws.models, copy / "models")
    assert (
        Pipeline.from_config(copy / "deploy" / path.name).version
        == Pipeline.from_config(path).version
    )


def test_version_ignores_how_it_is_served(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka and batching settings do not change the pipeline version."""
    version = Pipeline.from_config(_versioned(ws)).version
    monkeypatch.setenv("HEADRACE_KAFKA__INPUT_TOPIC", "elsewhere")
    monkeypatch.setenv("HEADRACE_BATCHING__MAX_ROWS", "7")
    assert Pipeline.from_config(_versioned(ws)).version == version


def test_version_changes_with_a_check(ws: Workspace) -> None:
    """Changing a check's expression gives a new version."""
    before = Pipeline.from_config(_versioned(ws, threshold=5.0)).version
    assert Pipeline.from_config(_versioned(ws, threshold=6.0)).version != before


def test_version_changes_with_the_model_bytes(ws: Workspace) -> None:
    """Replacing the model file by different bytes at the same path gives a new version."""
    before = Pipeline.from_config(_versioned(ws, factor=2.0)).version
    assert Pipeline.from_config(_versioned(ws, factor=3.0)).version != before


# --- serve: one bad request never fails its neighbours ---------------------------------------

_MARKED = """
    import threading

    import pyarrow as pa
    import pyarrow.compute as pc

    HOLD = threading.Event()

    def guard(table, context):
        ids = table.column("id").to_pylist()
        if 13 in ids:
            raise ValueError(f"id 13 is not served ({len(ids)} rows)")
        return pa.table({"tenfold": pc.multiply(table.column("id"), 10)})

    def stall(table, context):
        if 13 in table.column("id").to_pylist():
            HOLD.wait(30)
        return pa.table({"tenfold": pc.multiply(table.column("id"), 10)})
"""

_REQUESTS = [[0, 1], [2, 3, 4], [5, 13, 6], [7], [8, 9]]


def _requests(ids: list[list[int]]) -> list[pa.Table]:
    return [pa.table({"id": pa.array(row_ids, pa.int64())}) for row_ids in ids]


def _assert_served(result: Any, ids: list[int]) -> None:
    assert isinstance(result, pa.Table), result
    assert result.column("in.id").to_pylist() == ids
    assert result.column("out.tenfold").to_pylist() == [10 * i for i in ids]


def test_a_failing_request_does_not_fail_its_neighbours(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """Only the request holding the bad row fails; the others are served with their rows."""
    step = ws.python_step(ws.module(_MARKED), "guard", retries=2)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    results = pipeline.serve(_requests(_REQUESTS))
    assert len(results) == len(_REQUESTS)
    for index, (result, ids) in enumerate(zip(results, _REQUESTS, strict=True)):
        if index == 2:
            assert isinstance(result, StepError)
            assert result.attempts == 3
            assert result.step == "guard"
            assert "id 13 is not served (3 rows)" in str(result)
        else:
            _assert_served(result, ids)
    assert len(fake_sleep.delays) == 2  # only the lone bad request was retried


def test_several_failing_requests_are_each_isolated(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """Bad requests at both ends of a batch fail alone; the ones between are served."""
    step = ws.python_step(ws.module(_MARKED), "guard", retries=0)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    requests = [[13], [1, 2], [3], [4, 5, 6], [13, 7]]
    results = pipeline.serve(_requests(requests))
    assert [type(result).__name__ for result in results] == [
        "StepError",
        "Table",
        "Table",
        "Table",
        "StepError",
    ]
    for result, ids in zip(results[1:4], requests[1:4], strict=True):
        _assert_served(result, ids)
    assert all(r.attempts == 1 for r in results if isinstance(r, PipelineError))


def test_a_request_that_times_out_does_not_fail_its_neighbours(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """A request whose step stalls past its timeout fails alone, as a StepTimeout."""
    step = ws.python_step(ws.module(_MARKED), "stall", retries=1, timeout_ms=100)
    pipeline = ws.pipeline([step], sleep=fake_sleep)
    requests = [[0, 1], [2], [5, 13], [7, 8]]
    started = time.monotonic()
    results = pipeline.serve(_requests(requests))
    assert time.monotonic() - started < 3.0
    failed = results[2]
    assert isinstance(failed, StepTimeout)
    assert failed.attempts == 2
    assert failed.error_type == "step_timeout"
    for index in (0, 1, 3):
        _assert_served(results[index], requests[index])


def test_requests_of_different_schemas_are_served_in_order(ws: Workspace) -> None:
    """A batch mixing request schemas returns each request's own columns, in request order."""
    pipeline = ws.pipeline([ws.model_step("scale", ws.scale_model())])
    x = pa.array([[1, 1, 1]], FLOATS)
    requests = [
        pa.table({"x": x}),
        pa.table({"x": x, "id": ["b"]}),
        pa.table({"x": pa.array([[2, 2, 2], [3, 3, 3]], FLOATS)}),
    ]
    results = pipeline.serve(requests)
    assert [result.column_names[:3] for result in results] == [
        ["time", "in.x", "out.y"],
        ["time", "in.x", "in.id"],
        ["time", "in.x", "out.y"],
    ]
    assert results[2].column("out.total").to_pylist() == [12.0, 18.0]


def test_serve_of_a_batch_stamps_one_time_and_per_request_decode_time(ws: Workspace) -> None:
    """Requests of one batch share ``time``; ``metadata.elapsed[0]`` is each one's decode time."""
    pipeline = ws.pipeline([ws.model_step("scale", ws.scale_model())], clock_ns=lambda: 5_000_000)
    x = pa.array([[1, 1, 1]], FLOATS)
    results = pipeline.serve([pa.table({"x": x}), pa.table({"x": x})], decode_ns=[111, 222])
    assert [r.column("time")[0].value for r in results] == [5, 5]
    assert [r.column("metadata.elapsed")[0].as_py()[0] for r in results] == [111, 222]


# --- serve: the bounded cost of a hanging step, and the worker's hooks -----------------------

_HANGING = """
    import threading
    import time

    import pyarrow as pa
    import pyarrow.compute as pc

    HOLD = threading.Event()
    ALONE = threading.Event()  # set once request 13 runs on its own
    big_runs = 0

    def _tenfold(table):
        return pa.table({"tenfold": pc.multiply(table.column("id"), 10)})

    def hang_on_13(table, context):
        ids = table.column("id").to_pylist()
        if 13 in ids:
            if len(ids) == 1:
                ALONE.set()
            HOLD.wait(30)
        return _tenfold(table)

    def fail_on_13_hang_alone(table, context):
        ids = table.column("id").to_pylist()
        if 13 in ids and len(ids) > 1:
            raise ValueError("13 is bad")
        if 13 in ids:
            ALONE.set()
            HOLD.wait(30)
        return _tenfold(table)

    def hang_above_16_rows(table, context):
        global big_runs
        if table.num_rows > 16:
            big_runs += 1
            HOLD.wait(30)
        return _tenfold(table)

    def hang_always(table, context):
        HOLD.wait(30)
        return _tenfold(table)

    def twelve_ms_a_row(table, context):
        time.sleep(0.012 * table.num_rows)
        return _tenfold(table)

    def hang_json(value, context):
        ALONE.set()
        HOLD.wait(30)
        return value
"""


def _hanging(
    ws: Workspace, function: str, fake_sleep: FakeSleep, **step: Any
) -> tuple[Pipeline, ModuleType]:
    """A pipeline of one ``_HANGING`` step (20 ms, 2 retries, no backoff unless told), and
    its module."""
    module = ws.module(_HANGING)
    options = {"timeout_ms": 20, "retries": 2, "backoff_ms": 0, **step}
    pipeline = ws.pipeline([ws.python_step(module, function, **options)], sleep=fake_sleep)
    return pipeline, sys.modules[module]


def _serve_ids(pipeline: Pipeline, count: int, **hooks: Any) -> tuple[BatchResult, float]:
    """Serve requests of one row each, ids 0..count-1; the batch and the seconds it took."""
    started = time.monotonic()
    table = pa.table({"id": pa.array(range(count), pa.int64())})
    batch = pipeline.serve_batch(table, [1] * count, **hooks)
    return batch, time.monotonic() - started


def _served(batch: BatchResult) -> list[int]:
    return [index for segment in batch.segments for index in segment.requests]


def test_one_hanging_request_in_1000_fails_alone_within_the_bound(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """Two batches of 1,000 with a hanging request each: only it fails, each well in bound."""
    pipeline, _ = _hanging(ws, "hang_on_13", fake_sleep, retries=5)
    bound = pipeline.max_serve_seconds(1000)
    assert bound == pytest.approx(11 * 6 * 0.02)  # 10 halvings + alone, 6 attempts of 20 ms
    for _ in range(2):  # the first batch's abandoned runs still hang during the second
        batch, seconds = _serve_ids(pipeline, 1000)
        assert sorted(batch.errors) == [13], {e.message for e in batch.errors.values()}
        error = batch.errors[13]
        assert isinstance(error, StepTimeout)
        assert error.attempts == 6
        assert "ran past its timeout of 20 ms" in error.message
        assert sorted(_served(batch)) == [i for i in range(1000) if i != 13]
        assert seconds < bound


def test_a_step_too_slow_for_big_batches_serves_them_with_few_timeouts(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """A step timing out above 16 rows serves all 512 requests, timing out at a few ranges only."""
    pipeline, module = _hanging(ws, "hang_above_16_rows", fake_sleep)
    batch, _ = _serve_ids(pipeline, 512)
    assert not batch.errors
    assert sorted(_served(batch)) == list(range(512))
    tables = batch.per_request()
    assert [t.column("out.tenfold")[0].as_py() for t in tables] == [10 * i for i in range(512)]
    assert module.big_runs <= 8  # 31 if every range of 32 rows or more were tried


def test_a_step_hanging_on_every_request_ends_within_the_bound(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """1,000 requests of an always-hanging step end in bound, with few threads left behind."""
    before = set(threading.enumerate())
    pipeline, _ = _hanging(ws, "hang_always", fake_sleep, retries=5)
    batch, seconds = _serve_ids(pipeline, 1000)
    assert seconds < pipeline.max_serve_seconds(1000) + 0.2
    assert len(batch.errors) == 1000
    assert {error.error_type for error in batch.errors.values()} == {"step_timeout"}
    messages = {error.message for error in batch.errors.values()}
    limit = abandon_limit(1000, 5)
    assert f"python step 'hang_always' has {limit} abandoned runs still going" in "\n".join(
        messages
    )
    assert len(set(threading.enumerate()) - before) <= limit + 1


def test_requests_left_when_the_time_budget_is_spent_say_so(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """When isolating takes longer than its budget, the rest are dead letters saying why."""
    pipeline, _ = _hanging(ws, "twelve_ms_a_row", fake_sleep)
    bound = pipeline.max_serve_seconds(64)  # 7 levels x 60 ms; serving 64 alone takes 0.77 s
    batch, seconds = _serve_ids(pipeline, 64)
    assert seconds < bound + 0.2
    assert _served(batch)
    assert len(_served(batch)) + len(batch.errors) == 64
    spent = [error for error in batch.errors.values() if "time budget" in error.message]
    assert spent
    assert spent[-1].error_type == "step_timeout"
    assert "isolating the failing requests of a batch of 64 spent its time budget of " in (
        spent[-1].message
    )
    assert "step_timeout in step 'twelve_ms_a_row'" in spent[-1].message


def test_should_stop_returns_at_once_leaving_the_rest_unserved(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """Stopping while a lone request hangs returns it, and those after it, unserved."""
    pipeline, module = _hanging(ws, "fail_on_13_hang_alone", fake_sleep, timeout_ms=10_000)
    table = pa.table({"id": pa.array([0, 1, 13, 3], pa.int64())})
    started = time.monotonic()
    batch = pipeline.serve_batch(table, [1] * 4, should_stop=module.ALONE.is_set)
    assert time.monotonic() - started < 1.0
    assert _served(batch) == [0, 1]
    assert batch.unserved == [2, 3]
    assert not batch.errors


def test_keep_alive_is_called_while_a_step_hangs(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """While a lone request hangs for 0.7 s, ``keep_alive`` is called within every second."""
    pipeline, _ = _hanging(ws, "hang_on_13", fake_sleep, timeout_ms=700, retries=0)
    started = time.monotonic()
    calls: list[float] = []
    table = pa.table({"id": pa.array([13], pa.int64())})
    batch = pipeline.serve_batch(
        table, [1], keep_alive=lambda: calls.append(time.monotonic() - started)
    )
    assert isinstance(batch.errors[0], StepTimeout)
    assert calls
    assert max(b - a for a, b in zip([0.0, *calls], calls, strict=False)) < 1.0


def test_a_stop_hook_that_raises_ends_the_call_with_its_error(
    ws: Workspace, fake_sleep: FakeSleep
) -> None:
    """An exception from ``should_stop`` comes out of ``serve_batch`` as it is."""

    def broken() -> bool:
        raise ConnectionError("consumer closed")

    pipeline, _ = _hanging(ws, "hang_on_13", fake_sleep)
    with pytest.raises(ConnectionError, match="consumer closed"):
        _serve_ids(pipeline, 4, should_stop=broken)


def test_serve_custom_stops_a_hanging_request(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """``serve_custom`` raises Stopped at once when ``should_stop`` says so mid-request."""
    pipeline, module = _hanging(
        ws, "hang_json", fake_sleep, timeout_ms=10_000, accepts="custom-json"
    )
    started = time.monotonic()
    with pytest.raises(Stopped):
        pipeline.serve_custom({"a": 1}, should_stop=module.ALONE.is_set)
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("retries", "backoff_ms", "per_level"),
    [(2, 0, 0.35), (2, 100, 0.8), (0, 0, 0.3)],
    ids=["retries", "backoff", "no-retries"],
)
def test_max_serve_seconds_gives_each_isolation_level_a_request_alone(
    ws: Workspace, retries: int, backoff_ms: int, per_level: float
) -> None:
    """Each level may cost every step's timeout x (retries + 1) plus backoff, or two tries."""
    module = ws.module(_MARKED)
    options = {"retries": retries, "backoff_ms": backoff_ms}
    pipeline = ws.pipeline(
        [
            ws.python_step(module, "guard", timeout_ms=100, **options),
            ws.python_step(module, "stall", timeout_ms=50, retries=0),
        ]
    )
    assert pipeline.max_serve_seconds(1) == pytest.approx(per_level)
    assert pipeline.max_serve_seconds(2) == pytest.approx(2 * per_level)
    assert pipeline.max_serve_seconds(1000) == pytest.approx(11 * per_level)


# --- warm-up (SPEC §6) -----------------------------------------------------------------------


def test_warm_up_runs_every_model_on_a_batch_shaped_from_its_inputs(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Matrices, integers and free dimensions all get zeros of the right dtype and shape."""
    pipeline = ws.pipeline([ws.model_step("image", ws.image_model())])
    counts = ws.pipeline([ws.model_step("count", ws.count_model())])
    shapes: list[tuple[str, tuple[int, ...], str]] = []
    for target in (pipeline, counts):
        for model in target._built.models.values():
            real = model._session.run

            def spy(names: Any, feeds: dict[str, Any], *rest: Any, real: Any = real) -> Any:
                shapes.extend((k, v.shape, str(v.dtype)) for k, v in feeds.items())
                return real(names, feeds, *rest)

            monkeypatch.setattr(model, "_session", _Spied(model._session, spy))
    assert pipeline.warm_up() == [] and counts.warm_up(rows=3) == []
    # a fast model is run a few more times, to time it (see the tests below): same batch
    assert list(dict.fromkeys(shapes)) == [
        ("image", (1000, 8, 8), "float32"),
        ("ids", (3,), "int64"),
    ]


def _timed(
    monkeypatch: pytest.MonkeyPatch, pool_s: float, alone_s: float, cores: int = 2
) -> list[int]:
    """Warm-up's timings of a run with onnxruntime's pool and on the calling thread alone,
    stood in for (the real ones depend on the machine); the intra-op threads of each session
    timed come back in the list."""
    timed: list[int] = []

    def run_seconds(session: Any, outputs: Any, feeds: Any) -> float:
        threads = session.get_session_options().intra_op_num_threads
        timed.append(threads)
        return alone_s if threads == 1 else pool_s

    monkeypatch.setattr(model_module, "_run_seconds", run_seconds)
    monkeypatch.setattr(model_module.os, "cpu_count", lambda: cores)
    return timed


_IN_TURNS = [0] + [0, 1] * model_module._TIMED_RUNS  # one run to size it, then both in turns


def test_a_fast_model_is_served_on_the_calling_thread_unless_the_pool_is_clearly_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onnxruntime's sleeping pool costs more than it saves on a batch this fast: warm-up
    keeps the single-threaded session, and the model serves the same values with it."""
    pipeline = Pipeline.from_config(CCFRAUD)
    (model,) = pipeline._built.models.values()
    rows = pa.table({"tensor": _tensors(5)})
    before = pipeline.infer(rows).column("out.dense_1").to_pylist()
    timed = _timed(monkeypatch, pool_s=0.000048, alone_s=0.000052)
    assert pipeline.warm_up() == []
    assert model.threads == 1 and timed == _IN_TURNS
    assert model._session.get_session_options().intra_op_num_threads == 1
    assert pipeline.infer(rows).column("out.dense_1").to_pylist() == before


@pytest.mark.parametrize(
    ("pool_s", "alone_s", "cores", "timed"),
    [
        (0.0005, 0.0009, 2, _IN_TURNS),  # the pool is clearly faster
        (0.023, 0.0001, 2, [0]),  # a slow batch: one timed run, never tried alone
        (0.000065, 0.000047, 1, []),  # one core: nothing to choose
    ],
    ids=["pool faster", "slow model", "one core"],
)
def test_the_pool_is_kept_where_it_is_faster_or_the_model_slow(
    monkeypatch: pytest.MonkeyPatch, pool_s: float, alone_s: float, cores: int, timed: list[int]
) -> None:
    pipeline = Pipeline.from_config(CCFRAUD)
    (model,) = pipeline._built.models.values()
    seen = _timed(monkeypatch, pool_s, alone_s, cores)
    assert pipeline.warm_up() == []
    assert model.threads is None and seen == timed
    assert model._session.get_session_options().intra_op_num_threads == 0


def test_a_model_that_fails_its_warm_up_is_reported_not_raised(
    ccfraud: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    (model,) = ccfraud._built.models.values()

    def broken(rows: int = 1) -> None:
        raise RuntimeError("no zeros here")

    monkeypatch.setattr(model, "warm_up", broken)
    assert ccfraud.warm_up() == ["ccfraud: RuntimeError: no zeros here"]
    assert ccfraud.infer([{"tensor": [0.1] * 29}])  # and it serves


class _Spied:
    """An onnxruntime session whose ``run`` goes through ``spy``."""

    def __init__(self, session: Any, spy: Any) -> None:
        self._session = session
        self.run = spy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
