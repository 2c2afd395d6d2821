"""Step kinds as a user sees them: model, python (table and custom JSON), random_split, shadow."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.errors import ConfigError, SchemaError, StepError
from pipelines.pipeline import Pipeline

if TYPE_CHECKING:
    from conftest import FakeSleep, Workspace

REPO = Path(__file__).resolve().parents[3]
FLOATS = pa.list_(pa.float32())
CHECK_X = {"check": {"name": "big", "expr": "out.y[0] > 5"}}


def _xs(rows: list[list[float]], **columns: list[Any]) -> pa.Table:
    return pa.table({"x": pa.array(rows, FLOATS), **columns})


@pytest.fixture
def scale(ws: Workspace) -> Pipeline:
    """``out.y = 2 * x`` and ``out.total = sum(out.y)`` on ``x: float32[3]``."""
    return ws.pipeline([ws.model_step("scale", ws.scale_model(), retries=0)])


# --- model ---------------------------------------------------------------------------------


def test_model_outputs_become_out_columns_typed_by_shape(scale: Pipeline) -> None:
    """An ``[N, 3]`` output is ``out.y: list<float32>``; an ``[N]`` output a plain float column."""
    result = scale.infer(_xs([[1, 2, 3], [4, 5, 6]]))
    assert result.schema.field("out.y").type == FLOATS
    assert result.schema.field("out.total").type == pa.float32()
    assert result.column("out.y").to_pylist() == [[2, 4, 6], [8, 10, 12]]
    assert result.column("out.total").to_pylist() == [12, 30]


@pytest.mark.parametrize(
    "values",
    [
        pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int64())),
        pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float64())),
        pa.array([[1, 2, 3], [4, 5, 6]], pa.list_(pa.int32())),
        pa.array([[1, 2, 3], [4, 5, 6]], pa.large_list(pa.int64())),
    ],
    ids=["int64", "float64", "int32", "large_list"],
)
def test_json_like_numbers_are_cast_to_the_model_type(scale: Pipeline, values: pa.Array) -> None:
    """Integer and float64 lists (what JSON decodes to) are cast to float32 and served."""
    result = scale.infer(pa.table({"x": values}))
    assert result.schema.field("in.x").type == FLOATS
    assert result.column("out.y").to_pylist() == [[2, 4, 6], [8, 10, 12]]


def test_integer_model_input_takes_narrower_ints_and_whole_floats(ws: Workspace) -> None:
    """An int64 model input accepts int32 and integral float64 values, cast exactly."""
    pipeline = ws.pipeline([ws.model_step("count", ws.count_model())])
    for values in (pa.array([1, 41], pa.int32()), pa.array([1.0, 41.0], pa.float64())):
        result = pipeline.infer(pa.table({"ids": values}))
        assert result.schema.field("in.ids").type == pa.int64()
        assert result.column("out.next").to_pylist() == [2, 42]
        assert result.schema.field("out.next").type == pa.int64()


def test_fractional_float_for_an_integer_input_is_a_schema_error(ws: Workspace) -> None:
    """1.5 for an int64 input does not cast exactly: SchemaError naming column and types."""
    pipeline = ws.pipeline([ws.model_step("count", ws.count_model())])
    with pytest.raises(SchemaError, match=r"column 'ids': expected int64, got double") as caught:
        pipeline.infer(pa.table({"ids": [1.5, 2.0]}))
    assert caught.value.error_type == "schema_error"


def test_missing_column_names_it_the_expected_type_and_what_arrived(scale: Pipeline) -> None:
    """A request without the model's column names the column, its type and the columns sent."""
    with pytest.raises(SchemaError) as caught:
        scale.infer(pa.table({"z": pa.array([[1, 2, 3]], FLOATS)}))
    message = str(caught.value)
    assert "missing column 'x'" in message
    assert "float[3]" in message
    assert "['z']" in message


@pytest.mark.parametrize(
    ("values", "actual"),
    [
        (pa.array([["a", "b", "c"]]), "got list<item: string>"),
        (pa.array(["1,2,3"]), "got string"),
        (pa.array([1.0]), "got double"),
    ],
    ids=["string-list", "string", "scalar"],
)
def test_wrong_column_type_names_expected_and_actual(
    scale: Pipeline, values: pa.Array, actual: str
) -> None:
    """A column of strings or scalars for a float tensor names the column, expected and actual."""
    with pytest.raises(SchemaError) as caught:
        scale.infer(pa.table({"x": values}))
    message = str(caught.value)
    assert "column 'x': expected float[3]" in message
    assert actual in message


def test_short_tensor_names_the_row_and_its_length(ws: Workspace) -> None:
    """A 28-value row for ccfraud's 29-value tensor names the row and the 28 values."""
    pipeline = ws.pipeline([ws.model_step("ccfraud", str(REPO / "models" / "ccfraud.onnx"))])
    table = pa.table({"tensor": [[0.5] * 29, [0.5] * 29, [0.5] * 28]})
    with pytest.raises(SchemaError) as caught:
        pipeline.infer(table)
    message = str(caught.value)
    assert "column 'tensor': expected float[29]" in message
    assert "row 2 has 28 values" in message


@pytest.mark.parametrize(
    "rows", [[[1, 2, 3], None], [[1, 2, 3], [1, None, 3]]], ids=["null-row", "null-value"]
)
def test_nulls_are_a_schema_error(scale: Pipeline, rows: list[Any]) -> None:
    """A null row or a null value inside a tensor is a SchemaError naming the column."""
    with pytest.raises(SchemaError, match=r"column 'x': null values where float\[3\]"):
        scale.infer(pa.table({"x": pa.array(rows, pa.list_(pa.int64()))}))


def test_inputs_map_onnx_names_to_request_columns(ws: Workspace) -> None:
    """``inputs: {x: features}`` feeds the ``features`` column to the model's ``x``."""
    pipeline = ws.pipeline([ws.model_step("scale", ws.scale_model(), inputs={"x": "features"})])
    assert pipeline.input_schema == pa.schema([pa.field("features", FLOATS)])
    result = pipeline.infer(pa.table({"features": pa.array([[1, 1, 1]], FLOATS)}))
    assert result.column_names[:2] == ["time", "in.features"]
    assert result.column("out.y").to_pylist() == [[2, 2, 2]]


def test_image_input_takes_nested_8x8_and_flat_64(ws: Workspace) -> None:
    """A ``[N, 8, 8]`` input takes nested 8x8 lists and flat lists of 64 values alike."""
    pipeline = ws.pipeline([ws.model_step("image", ws.image_model())])
    image = np.arange(64, dtype=np.float64).reshape(8, 8)
    nested = pipeline.infer(pa.table({"image": [image.tolist(), np.ones((8, 8)).tolist()]}))
    flat = pipeline.infer(pa.table({"image": [image.ravel().tolist(), [1.0] * 64]}))
    assert nested.column("out.total").to_pylist() == [2016.0, 64.0]
    assert flat.column("out.total").to_pylist() == [2016.0, 64.0]
    assert flat.schema.field("in.image").type == pa.list_(FLOATS)


@pytest.mark.parametrize(
    ("image", "where"),
    [(np.ones((7, 8)), "axis 1 instead of 8"), (np.ones((8, 7)), "axis 2 instead of 8")],
    ids=["7-rows", "7-columns"],
)
def test_misshapen_image_names_the_row_and_axis(
    ws: Workspace, image: np.ndarray, where: str
) -> None:
    """An image of the wrong shape names the row and the axis that is off."""
    pipeline = ws.pipeline([ws.model_step("image", ws.image_model())])
    with pytest.raises(SchemaError) as caught:
        pipeline.infer(pa.table({"image": [np.ones((8, 8)).tolist(), image.tolist()]}))
    assert "row 1 has 7 values at " + where in str(caught.value)


def test_flat_image_of_the_wrong_size_is_a_schema_error(ws: Workspace) -> None:
    """63 flat values for an 8x8 image are refused, naming the column and the expected shape."""
    pipeline = ws.pipeline([ws.model_step("image", ws.image_model())])
    with pytest.raises(SchemaError, match=r"column 'image': expected float\[8, 8\]"):
        pipeline.infer(pa.table({"image": [[1.0] * 64, [1.0] * 63]}))


# --- python --------------------------------------------------------------------------------


def test_python_step_table_in_table_out(ws: Workspace) -> None:
    """A python step's returned columns become ``out.*``; the request's are echoed as ``in.*``."""
    module = ws.module(
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        def enrich(table, context):
            return pa.table({
                "doubled": pc.multiply(table.column("v"), 2),
                "tag": pa.array(["t"] * table.num_rows),
            })
        """
    )
    pipeline = ws.pipeline([ws.python_step(module, "enrich")])
    result = pipeline.infer(pa.table({"v": [1, 2, 3]}))
    assert result.column_names == ["time", "in.v", "out.doubled", "out.tag", "check_failures"]
    assert result.column("out.doubled").to_pylist() == [2, 4, 6]
    assert result.column("out.tag").to_pylist() == ["t", "t", "t"]


def test_python_step_output_feeds_the_next_model(ws: Workspace) -> None:
    """A python step that builds ``x`` from raw columns feeds the model after it."""
    module = ws.module(
        """
        import pyarrow as pa

        def features(table, context):
            raw = table.column("raw").to_pylist()
            return pa.table({"x": pa.array([[v, v, v] for v in raw], pa.list_(pa.float32()))})
        """
    )
    pipeline = ws.pipeline(
        [ws.python_step(module, "features"), ws.model_step("scale", ws.scale_model())]
    )
    result = pipeline.infer(pa.table({"raw": [1.0, 10.0]}))
    assert result.column("out.y").to_pylist() == [[2, 2, 2], [20, 20, 20]]
    assert result.column("in.raw").to_pylist() == [1.0, 10.0]


_PARAMETERS = """
    import pyarrow as pa

    def greet(table, context):
        n = table.num_rows
        return pa.table({
            "greeting": [context.parameters.get("greeting", "(none)")] * n,
            "pipeline": [context.pipeline] * n,
        })
"""


def test_parameters_reach_the_python_step_through_infer(ws: Workspace) -> None:
    """``infer(parameters=...)`` is what the step sees as ``context.parameters``."""
    pipeline = ws.pipeline([ws.python_step(ws.module(_PARAMETERS), "greet")], name="hello")
    table = pa.table({"v": [1, 2]})
    assert pipeline.infer(table, parameters={"greeting": "hi"}).column(
        "out.greeting"
    ).to_pylist() == ["hi", "hi"]
    plain = pipeline.infer(table)
    assert plain.column("out.greeting").to_pylist() == ["(none)", "(none)"]
    assert plain.column("out.pipeline").to_pylist() == ["hello", "hello"]


def test_parameters_reach_the_python_step_through_serve(ws: Workspace) -> None:
    """``serve(tables, parameters)`` hands the parameters to every request of the batch."""
    pipeline = ws.pipeline([ws.python_step(ws.module(_PARAMETERS), "greet")])
    results = pipeline.serve(
        [pa.table({"v": [1]}), pa.table({"v": [2, 3]})], parameters={"greeting": "salut"}
    )
    assert [r.column("out.greeting").to_pylist() for r in results] == [
        ["salut"],
        ["salut", "salut"],
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return table.slice(0, 1)", "returned 1 rows for 3 input rows"),
        ("return {'v': [1, 2, 3]}", "returned dict; it must return a pyarrow.Table"),
        ("raise ValueError('no such customer 42')", "raised ValueError: no such customer 42"),
    ],
    ids=["row-count", "not-a-table", "raises"],
)
def test_python_step_failures_are_step_errors(
    ws: Workspace, fake_sleep: FakeSleep, body: str, expected: str
) -> None:
    """Wrong row counts, non-tables and exceptions fail the request as a StepError saying why."""
    module = ws.module(f"def lookup(table, context):\n    {body}\n")
    pipeline = ws.pipeline([ws.python_step(module, "lookup", retries=0)], sleep=fake_sleep)
    with pytest.raises(StepError) as caught:
        pipeline.infer(pa.table({"v": [1, 2, 3]}))
    error = caught.value
    assert f"python step 'lookup' {expected}" in str(error)
    assert error.error_type == "step_error"
    assert error.step == "lookup"


def test_custom_json_pipeline_returns_json() -> None:
    """configs/forecast.yaml takes the sample JSON and returns a 7-day forecast as JSON."""
    pipeline = Pipeline.from_config(REPO / "configs" / "forecast.yaml")
    request = json.loads((REPO / "data" / "forecast.json").read_text(encoding="utf-8"))
    result = pipeline.infer(request)
    assert pipeline.is_custom
    assert pipeline.input_schema is None
    assert list(result) == ["forecast"]
    assert len(result["forecast"]) == 7
    assert all(isinstance(value, float) and value >= 0 for value in result["forecast"])
    json.dumps(result)


def test_custom_json_step_error_is_a_step_error(ws: Workspace) -> None:
    """A custom-json step that raises fails the request with its exception's text."""
    module = ws.module("def run(value, context):\n    raise KeyError('count')\n")
    pipeline = ws.pipeline([ws.python_step(module, "run", accepts="custom-json", retries=0)])
    with pytest.raises(StepError, match=r"python step 'run' raised KeyError: 'count'"):
        pipeline.infer({"counts": [1]})


def test_custom_json_step_returning_non_json_is_a_step_error(ws: Workspace) -> None:
    """A custom-json step whose result is not JSON fails with a StepError naming the step."""
    module = ws.module("def run(value, context):\n    return {'when': object()}\n")
    pipeline = ws.pipeline([ws.python_step(module, "run", accepts="custom-json", retries=0)])
    with pytest.raises(StepError, match=r"python step 'run' returned a value that is not JSON"):
        pipeline.infer({"counts": [1]})


def test_custom_json_first_step_cannot_be_followed_by_a_model(ws: Workspace) -> None:
    """A model after a custom-json step is a ConfigError naming the model's step."""
    module = ws.module("def run(value, context):\n    return value\n")
    path = ws.config(
        [
            ws.python_step(module, "run", accepts="custom-json"),
            ws.model_step("scale", ws.scale_model()),
        ]
    )
    with pytest.raises(ConfigError, match=r"key 'pipeline\.steps\[1\]'.*custom-json"):
        Pipeline.from_config(path)


def test_custom_json_step_cannot_follow_a_table_step(ws: Workspace) -> None:
    """A custom-json step after a model names its ``accepts`` key."""
    module = ws.module("def run(value, context):\n    return value\n")
    path = ws.config(
        [
            ws.model_step("scale", ws.scale_model()),
            ws.python_step(module, "run", accepts="custom-json"),
        ]
    )
    with pytest.raises(ConfigError, match=r"key 'pipeline\.steps\[1\]\.python\.accepts'"):
        Pipeline.from_config(path)


# --- random_split --------------------------------------------------------------------------


def _split(
    ws: Workspace, *, weights: dict[str, int], hash_key: str | None = None
) -> dict[str, Any]:
    """A split between ``double`` (y = 2x) and ``triple`` (y = 3x), then a check on ``out.y``."""
    split: dict[str, Any] = {
        "weights": weights,
        "branches": {
            "double": [ws.model_step("double", ws.scale_model("double.onnx", factor=2.0))],
            "triple": [ws.model_step("triple", ws.scale_model("triple.onnx", factor=3.0))],
        },
    }
    if hash_key is not None:
        split["hash_key"] = hash_key
    return {"random_split": split}


def _ids(count: int, **columns: list[Any]) -> pa.Table:
    return pa.table(
        {
            "x": pa.array([[float(i), 1.0, 0.0] for i in range(count)], FLOATS),
            "id": list(range(count)),
            **columns,
        }
    )


def test_split_routes_rows_by_weight(ws: Workspace) -> None:
    """Weights 3:1 send about three quarters of many rows to the first branch."""
    pipeline = ws.pipeline([_split(ws, weights={"double": 3, "triple": 1})], seed=11)
    result = pipeline.infer(_ids(4000))
    shares = Counter(result.column("out._model_split").to_pylist())
    assert set(shares) == {"double", "triple"}
    assert shares["double"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_split_keeps_input_order_and_names_the_branch_of_each_row(ws: Workspace) -> None:
    """Rows come back in input order; each row's outputs are those of the branch it names."""
    pipeline = ws.pipeline([_split(ws, weights={"double": 1, "triple": 1}), CHECK_X], seed=3)
    result = pipeline.infer(_ids(200), dataset=["*", "metadata"])
    assert result.column("in.id").to_pylist() == list(range(200))
    factor = {"double": 2.0, "triple": 3.0}
    branches = result.column("out._model_split").to_pylist()
    for i, (branch, y, fired, last_model) in enumerate(
        zip(
            branches,
            result.column("out.y").to_pylist(),
            result.column("anomaly.big").to_pylist(),
            result.column("metadata.last_model").to_pylist(),
            strict=True,
        )
    ):
        assert y == [factor[branch] * i, factor[branch], 0.0]
        assert fired == (factor[branch] * i > 5)
        assert json.loads(last_model)["model_name"] == branch
    assert result.schema.field("out._model_split").type == pa.string()


def test_split_with_hash_key_is_sticky(ws: Workspace) -> None:
    """Rows with the same ``hash_key`` value take the same branch, across calls and instances."""
    path = ws.config([_split(ws, weights={"double": 1, "triple": 1}, hash_key="in.user")])
    users = [f"user-{i % 50}" for i in range(300)]
    first = Pipeline.from_config(path, seed=1)
    second = Pipeline.from_config(path, seed=2)

    def branch_of(pipeline: Pipeline, rows: list[str]) -> dict[str, str]:
        result = pipeline.infer(_ids(len(rows), user=rows))
        seen: dict[str, str] = {}
        for user, branch in zip(rows, result.column("out._model_split").to_pylist(), strict=True):
            assert seen.setdefault(user, branch) == branch
        return seen

    chosen = branch_of(first, users)
    assert set(chosen.values()) == {"double", "triple"}
    assert branch_of(first, users[::-1]) == chosen
    assert branch_of(second, users[:120]) == {user: chosen[user] for user in users[:120]}


def test_split_hash_key_missing_from_the_request_is_a_schema_error(ws: Workspace) -> None:
    """A ``hash_key`` column the request lacks is a SchemaError naming it."""
    pipeline = ws.pipeline([_split(ws, weights={"double": 1, "triple": 1}, hash_key="user")])
    with pytest.raises(SchemaError, match="hash_key 'user' is not a column of the request"):
        pipeline.infer(_ids(3))


# --- shadow --------------------------------------------------------------------------------


def _shadow(ws: Workspace, *challengers: dict[str, Any]) -> dict[str, Any]:
    champion = ws.model_step("champion", ws.scale_model("champion.onnx", factor=2.0, width=16))
    return {"shadow": {"champion": champion, "challengers": list(challengers)}}


def _wide(rows: int, **columns: list[Any]) -> pa.Table:
    return pa.table({"x": pa.array([[float(i)] * 16 for i in range(rows)], FLOATS), **columns})


def test_shadow_champion_serves_out_and_challengers_out_name(ws: Workspace) -> None:
    """Champion outputs are ``out.*``; a challenger's are ``out_<challenger>.*`` beside them."""
    challenger = ws.model_step("triple", ws.scale_model("triple.onnx", factor=3.0, width=16))
    pipeline = ws.pipeline([_shadow(ws, challenger)])
    result = pipeline.infer(_wide(2), dataset=["*", "metadata"])
    assert [name for name in result.column_names if name.startswith("out")] == [
        "out.y",
        "out.total",
        "out_triple.y",
        "out_triple.total",
    ]
    assert result.column("out.total").to_pylist() == [0.0, 32.0]
    assert result.column("out_triple.total").to_pylist() == [0.0, 48.0]
    assert result.schema.field("out_triple.y").type == FLOATS
    assert json.loads(result.column("metadata.last_model")[0].as_py())["model_name"] == ("champion")


def test_shadow_challenger_missing_its_input_gives_nulls(ws: Workspace) -> None:
    """A challenger whose input is not in the request gives typed null columns, rows served."""
    challenger = ws.model_step(
        "needs_z", ws.scale_model("z.onnx", width=16, input_name="z"), retries=0
    )
    pipeline = ws.pipeline([_shadow(ws, challenger)])
    result = pipeline.infer(_wide(3))
    assert result.column("out.total").to_pylist() == [0.0, 32.0, 64.0]
    assert result.column("out_needs_z.y").to_pylist() == [None, None, None]
    assert result.column("out_needs_z.total").to_pylist() == [None, None, None]
    assert result.schema.field("out_needs_z.y").type == FLOATS
    assert result.schema.field("out_needs_z.total").type == pa.float32()


def test_shadow_challenger_timeout_gives_nulls(ws: Workspace, fake_sleep: FakeSleep) -> None:
    """A challenger that runs past its timeout gives nulls, the champion's rows are served."""
    challenger = ws.model_step("slow", ws.slow_model(), timeout_ms=150, retries=1)
    pipeline = ws.pipeline([_shadow(ws, challenger)], sleep=fake_sleep)
    started = time.monotonic()
    result = pipeline.infer(_wide(2, n=[10**12, 1]))
    assert time.monotonic() - started < 2.0
    assert result.column("out.total").to_pylist() == [0.0, 32.0]
    assert result.column("out_slow.y").to_pylist() == [None, None]
    assert len(fake_sleep.delays) == 1  # the challenger was retried once, then given up
