"""The result table of SPEC §4: its columns, their order and types, and the dataset selection."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest

from pipelines.errors import SchemaError, StepError
from pipelines.pipeline import Pipeline
from pipelines.results import groups_for, select

if TYPE_CHECKING:
    from conftest import Workspace

REPO = Path(__file__).resolve().parents[3]
FLOATS = pa.list_(pa.float32())
SERVED_AT_NS = 1_700_000_000_123_456_789
CHECKS = [
    {"check": {"name": "big", "expr": "out.y[0] > 5"}},
    {"check": {"name": "negative", "expr": "in.x[1] < 0"}},
]
ALL_COLUMNS = [
    "time",
    "in.x",
    "in.id",
    "out.y",
    "out.total",
    "check_failures",
    "anomaly.big",
    "anomaly.negative",
    "metadata.elapsed",
    "metadata.last_model",
    "metadata.pipeline_version",
]


@pytest.fixture
def pipeline(ws: Workspace) -> Pipeline:
    """``scale`` (y = 2x) then checks ``big`` and ``negative``, served at a fixed time."""
    steps = [ws.model_step("scale", ws.scale_model()), *CHECKS]
    return ws.pipeline(steps, clock_ns=lambda: SERVED_AT_NS)


@pytest.fixture
def request_table() -> pa.Table:
    return pa.table(
        {
            "x": pa.array([[3, -1, 0], [1, 1, 1], [3, 1, 0]], FLOATS),
            "id": ["a", "b", "c"],
        }
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_columns_come_in_spec_order_with_spec_types(
    pipeline: Pipeline, request_table: pa.Table
) -> None:
    """``*`` plus ``metadata`` gives every column of SPEC §4, in its order, with its types."""
    result = pipeline.infer(request_table, dataset=["*", "metadata"])
    assert result.column_names == ALL_COLUMNS
    types = dict(zip(result.column_names, result.schema.types, strict=True))
    assert types == {
        "time": pa.timestamp("ms", tz="UTC"),
        "in.x": FLOATS,
        "in.id": pa.string(),
        "out.y": FLOATS,
        "out.total": pa.float32(),
        "check_failures": pa.int8(),
        "anomaly.big": pa.bool_(),
        "anomaly.negative": pa.bool_(),
        "metadata.elapsed": pa.list_(pa.int64()),
        "metadata.last_model": pa.string(),
        "metadata.pipeline_version": pa.string(),
    }


def test_time_is_when_the_batch_was_served(pipeline: Pipeline, request_table: pa.Table) -> None:
    """``time`` is the pipeline clock at serving, in milliseconds, on every row."""
    result = pipeline.infer(request_table)
    served = datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert result.column("time").to_pylist() == [served] * 3


def test_checks_fire_per_row_and_are_counted(pipeline: Pipeline, request_table: pa.Table) -> None:
    """``anomaly.<check>`` is true where the check fires; ``check_failures`` counts them."""
    result = pipeline.infer(request_table)
    assert result.column("anomaly.big").to_pylist() == [True, False, True]
    assert result.column("anomaly.negative").to_pylist() == [True, False, False]
    assert result.column("check_failures").to_pylist() == [2, 0, 1]


def test_check_on_a_missing_column_is_a_step_error_listing_columns(ws: Workspace) -> None:
    """A check naming a column the result lacks fails the request, listing what exists."""
    steps = [
        ws.model_step("scale", ws.scale_model()),
        {"check": {"name": "c", "expr": "out.z > 1"}},
    ]
    with pytest.raises(StepError) as caught:
        ws.pipeline(steps).infer(pa.table({"x": pa.array([[1, 2, 3]], FLOATS)}))
    message = str(caught.value)
    assert "column 'out.z' does not exist" in message
    assert "out.y" in message
    assert caught.value.step == "c"


def test_metadata_columns(ws: Workspace, pipeline: Pipeline, request_table: pa.Table) -> None:
    """``metadata.*`` holds per-step nanoseconds, the last model's name and sha, the version."""
    result = pipeline.infer(request_table, dataset=["metadata"])
    assert result.column_names == [
        "metadata.elapsed",
        "metadata.last_model",
        "metadata.pipeline_version",
    ]
    for elapsed in result.column("metadata.elapsed").to_pylist():
        assert len(elapsed) == 1 + 3  # decode, scale, big, negative
        assert all(ns >= 0 for ns in elapsed)
        assert elapsed[1] > 0
    expected_model = {"model_name": "scale", "model_sha": _sha256(ws.models / "scale.onnx")}
    for last_model in result.column("metadata.last_model").to_pylist():
        assert json.loads(last_model) == expected_model
    assert result.column("metadata.pipeline_version").to_pylist() == [pipeline.version] * 3


def test_ccfraud_result_matches_the_spec_example() -> None:
    """ccfraud serves ``out.dense_1: list<float32>`` and ``anomaly.fraud`` as in SPEC §4."""
    pipeline = Pipeline.from_config(REPO / "configs" / "ccfraud.yaml")
    tensor = pa.array([[0.1] * 29, [-0.2] * 29], FLOATS)
    result = pipeline.infer(pa.table({"tensor": tensor}), dataset=["*", "metadata"])
    assert result.column_names == [
        "time",
        "in.tensor",
        "out.dense_1",
        "check_failures",
        "anomaly.fraud",
        "metadata.elapsed",
        "metadata.last_model",
        "metadata.pipeline_version",
    ]
    assert result.schema.field("out.dense_1").type == FLOATS
    assert [len(v) for v in result.column("out.dense_1").to_pylist()] == [1, 1]
    last_model = json.loads(result.column("metadata.last_model")[0].as_py())
    assert last_model == {
        "model_name": "ccfraud",
        "model_sha": _sha256(REPO / "models" / "ccfraud.onnx"),
    }


@pytest.mark.parametrize("dataset", [None, ["*"]], ids=["default", "star"])
def test_star_leaves_metadata_out(
    pipeline: Pipeline, request_table: pa.Table, dataset: list[str] | None
) -> None:
    """``*`` (and no dataset at all) selects every group except ``metadata``."""
    result = pipeline.infer(request_table, dataset=dataset)
    assert result.column_names == ALL_COLUMNS[:-3]


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        (["out"], ["out.y", "out.total"]),
        (["anomaly", "in"], ["in.x", "in.id", "anomaly.big", "anomaly.negative"]),
        (["time", "out.total", "metadata.elapsed"], ["time", "out.total", "metadata.elapsed"]),
        (["check_failures", "anomaly.negative"], ["check_failures", "anomaly.negative"]),
        (["*", "metadata.pipeline_version"], [*ALL_COLUMNS[:-3], "metadata.pipeline_version"]),
    ],
)
def test_dataset_selects_groups_and_fields_in_result_order(
    pipeline: Pipeline, request_table: pa.Table, dataset: list[str], expected: list[str]
) -> None:
    """Groups and single fields select their columns, always in the result's order."""
    assert pipeline.infer(request_table, dataset=dataset).column_names == expected


@pytest.mark.parametrize(
    ("exclude", "expected"),
    [
        (
            ["in"],
            ["time", "out.y", "out.total", "check_failures", "anomaly.big", "anomaly.negative"],
        ),
        (["anomaly", "time"], ["in.x", "in.id", "out.y", "out.total", "check_failures"]),
        (
            ["in.id", "out.y", "anomaly.big"],
            ["time", "in.x", "out.total", "check_failures", "anomaly.negative"],
        ),
    ],
)
def test_dataset_exclude_removes_groups_and_fields(
    pipeline: Pipeline, request_table: pa.Table, exclude: list[str], expected: list[str]
) -> None:
    """``dataset_exclude`` removes whole groups or single fields from the selection."""
    assert pipeline.infer(request_table, dataset_exclude=exclude).column_names == expected


def test_exclude_applies_to_metadata_asked_for(pipeline: Pipeline, request_table: pa.Table) -> None:
    """A metadata field can be excluded from ``["*", "metadata"]``."""
    result = pipeline.infer(
        request_table, dataset=["*", "metadata"], dataset_exclude=["metadata.elapsed"]
    )
    assert result.column_names == [*ALL_COLUMNS[:-3], *ALL_COLUMNS[-2:]]


@pytest.mark.parametrize(
    ("dataset", "exclude"),
    [
        (["*", "meta"], None),
        (["*", "meta.elapsed", "meta.last_model", "meta.pipeline_version"], None),
        (["*", "meta"], ["meta.elapsed"]),
    ],
)
def test_meta_is_the_metadata_group_as_wallaroo_names_it(
    pipeline: Pipeline, request_table: pa.Table, dataset: list[str], exclude: list[str] | None
) -> None:
    """``meta`` (Wallaroo's name) selects and excludes exactly what ``metadata`` does."""
    as_metadata = [entry.replace("meta", "metadata", 1) for entry in dataset]
    excluded = None if exclude is None else [e.replace("meta", "metadata", 1) for e in exclude]
    got = pipeline.infer(request_table, dataset=dataset, dataset_exclude=exclude)
    want = pipeline.infer(request_table, dataset=as_metadata, dataset_exclude=excluded)
    assert got.column_names == want.column_names
    assert "metadata.last_model" in got.column_names


def test_config_dataset_is_the_default_selection(ws: Workspace, request_table: pa.Table) -> None:
    """``processing.dataset`` and ``dataset_exclude`` apply when ``infer`` names none."""
    steps = [ws.model_step("scale", ws.scale_model()), *CHECKS]
    processing = {"dataset": ["out", "metadata"], "dataset_exclude": ["metadata.last_model"]}
    pipeline = ws.pipeline(steps, processing=processing)
    assert pipeline.infer(request_table).column_names == [
        "out.y",
        "out.total",
        "metadata.elapsed",
        "metadata.pipeline_version",
    ]
    assert pipeline.infer(request_table, dataset=["in"]).column_names == ["in.x", "in.id"]


@pytest.mark.parametrize("separator", ["_", "/"])
def test_separator_renames_columns_and_reads_fields_written_with_it(
    pipeline: Pipeline, request_table: pa.Table, separator: str
) -> None:
    """A separator replaces the dot in names, and dataset fields may be written with it."""
    every = pipeline.infer(request_table, dataset=["*", "metadata"], dataset_separator=separator)
    assert every.column_names == [name.replace(".", separator, 1) for name in ALL_COLUMNS]
    dataset = [f"out{separator}total", "check_failures", f"metadata{separator}elapsed", "anomaly"]
    chosen = pipeline.infer(
        request_table,
        dataset=dataset,
        dataset_exclude=[f"anomaly{separator}big"],
        dataset_separator=separator,
    )
    assert chosen.column_names == [
        f"out{separator}total",
        "check_failures",
        f"anomaly{separator}negative",
        f"metadata{separator}elapsed",
    ]
    assert chosen.column(f"out{separator}total").to_pylist() == [4.0, 6.0, 8.0]


def test_dotted_fields_work_with_another_separator(
    pipeline: Pipeline, request_table: pa.Table
) -> None:
    """A field written with dots still selects its column when the separator is ``/``."""
    result = pipeline.infer(request_table, dataset=["out.y"], dataset_separator="/")
    assert result.column_names == ["out/y"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"dataset": ["outputs"]}, "'outputs'"),
        ({"dataset": ["out.dense_1"]}, "'out.dense_1'"),
        ({"dataset_exclude": ["anomaly.tiny"]}, "'anomaly.tiny'"),
        ({"dataset": ["out/z"], "dataset_separator": "/"}, "'out/z'"),
    ],
)
def test_unknown_dataset_entry_is_a_schema_error_naming_it(
    pipeline: Pipeline, request_table: pa.Table, options: dict[str, Any], named: str
) -> None:
    """A dataset entry that is neither a group nor a column is refused by name."""
    with pytest.raises(SchemaError) as caught:
        pipeline.infer(request_table, **options)
    message = str(caught.value)
    assert f"dataset names {named}" in message
    assert "check_failures" in message  # the groups it could have named


def test_shadow_challenger_columns_are_in_the_out_group(ws: Workspace) -> None:
    """``out`` selects the challenger's ``out_<name>.*`` too; ``out_<name>`` selects only those."""
    shadow = {
        "shadow": {
            "champion": ws.model_step("champ", ws.scale_model("champ.onnx")),
            "challengers": [ws.model_step("triple", ws.scale_model("triple.onnx", factor=3.0))],
        }
    }
    pipeline = ws.pipeline([shadow])
    table = pa.table({"x": pa.array([[1, 1, 1]], FLOATS)})
    assert pipeline.infer(table, dataset=["out"]).column_names == [
        "out.y",
        "out.total",
        "out_triple.y",
        "out_triple.total",
    ]
    assert pipeline.infer(table, dataset=["out_triple"]).column_names == [
        "out_triple.y",
        "out_triple.total",
    ]
    assert pipeline.infer(table, dataset=["out"], dataset_exclude=["out_triple"]).column_names == [
        "out.y",
        "out.total",
    ]
    renamed = pipeline.infer(table, dataset=["out_triple_total"], dataset_separator="_")
    assert renamed.column_names == ["out_triple_total"]
    assert renamed.column("out_triple_total").to_pylist() == [9.0]


def test_metadata_with_star_in_a_split_pipeline(ws: Workspace) -> None:
    """``["*", "metadata"]`` works in a split pipeline: one elapsed value per top-level step."""
    split = {
        "random_split": {
            "weights": {"a": 1, "b": 1},
            "branches": {
                "a": [ws.model_step("a", ws.scale_model("a.onnx"))],
                "b": [ws.model_step("b", ws.scale_model("b.onnx", factor=3.0))],
            },
        }
    }
    pipeline = ws.pipeline([split, CHECKS[0]], seed=5)
    table = pa.table({"x": pa.array([[1, 1, 1]] * 20, FLOATS)})
    result = pipeline.infer(table, dataset=["*", "metadata"])
    assert result.column_names == [
        "time",
        "in.x",
        "out.y",
        "out.total",
        "out._model_split",
        "check_failures",
        "anomaly.big",
        "metadata.elapsed",
        "metadata.last_model",
        "metadata.pipeline_version",
    ]
    assert {len(elapsed) for elapsed in result.column("metadata.elapsed").to_pylist()} == {3}
    names = [json.loads(v)["model_name"] for v in result.column("metadata.last_model").to_pylist()]
    assert names == result.column("out._model_split").to_pylist()


@pytest.mark.parametrize(
    ("dataset", "separator"),
    [
        (["out"], "."),
        (["anomaly", "in"], "."),
        (["time", "out.total", "metadata.elapsed"], "."),
        (["check_failures", "anomaly.negative"], "."),
        (["*", "meta"], "."),
        (["*"], "."),
        (["out_total", "in"], "_"),  # another separator: every group is built
    ],
)
def test_building_only_the_asked_groups_gives_the_same_result(
    pipeline: Pipeline, request_table: pa.Table, dataset: list[str], separator: str
) -> None:
    """What the worker builds for a request's dataset (``groups_for``) selects to exactly what
    the whole result would: same columns, same values."""
    conformed = pipeline.conform(request_table)
    whole = pipeline.serve_batch(conformed, [3]).segments[0].table
    lazy = pipeline.serve_batch(conformed, [3], groups=groups_for(tuple(dataset)))
    part = lazy.segments[0].table
    expected = select(whole, dataset, None, separator)
    got = select(part, dataset, None, separator)
    assert got.column_names == expected.column_names
    for name in expected.column_names:
        if "elapsed" not in name:  # step timings differ from one call to the next
            assert got.column(name).equals(expected.column(name)), name


def test_groups_for_names_the_groups_a_dataset_reaches() -> None:
    assert groups_for(("out",)) == {"out"}
    assert groups_for(("out.dense_1", "meta")) == {"out", "metadata"}
    assert groups_for(("out_challenger.y",)) == {"out"}
    assert groups_for(("*",)) == {"time", "in", "out", "check_failures", "anomaly"}
    assert groups_for(None) == groups_for(("*",))
    assert groups_for(("out_dense_1",)) is None  # another separator: cannot tell
    assert groups_for(("nonsense",)) is None


def test_an_unknown_dataset_entry_is_still_refused_by_name(
    pipeline: Pipeline, request_table: pa.Table
) -> None:
    batch = pipeline.serve_batch(pipeline.conform(request_table), [3], groups=groups_for(("x",)))
    with pytest.raises(SchemaError, match="dataset names 'x'"):
        select(batch.segments[0].table, ["x"])
