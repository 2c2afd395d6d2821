"""Check expressions: the grammar, null handling, and the errors a user sees."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.check import Check, compile_check
from pipelines.errors import ConfigError, StepError

_IMAGE = np.arange(4 * 64, dtype=np.float32).reshape(4, 8, 8)


@pytest.fixture
def table() -> pa.Table:
    return pa.table(
        {
            "out.dense_1": pa.array(
                [[0.95, 0.05], [0.2, 0.8], [0.5, 0.5], None], pa.list_(pa.float32())
            ),
            "in.image": pa.array(
                [[list(row) for row in image] for image in _IMAGE],
                pa.list_(pa.list_(pa.float32())),
            ),
            "in.amount": pa.array([2000, 10, None, 5000], pa.int64()),
            "in.score": pa.array([0.5, -1.5, 2.0, None], pa.float64()),
            "in.flag": pa.array([True, False, None, True]),
            "in.items": pa.array([[1, 2, 3], [], [7], [None, 4]], pa.list_(pa.int64())),
            "out.output:0": pa.array([1.0, 2.0, 3.0, 4.0]),
            "out_challenger.dense_1": pa.array([[0.1], [0.99], [0.5], [0.2]]),
        }
    )


def fires(table: pa.Table, expr: str) -> list[bool]:
    result = compile_check("c", expr)(table.column, table.num_rows, available=table.column_names)
    assert isinstance(result, pa.BooleanArray)
    assert len(result) == table.num_rows
    return list(result.to_pylist())


def test_index_into_float32_list(table: pa.Table) -> None:
    """`[i]` picks one item of each row's list; a null row does not fire."""
    assert fires(table, "out.dense_1[0] > 0.9") == [True, False, False, False]
    assert fires(table, "out.dense_1[1] >= 0.5") == [False, True, True, False]


def test_index_chains_into_nested_lists(table: pa.Table) -> None:
    """`in.image[2][3]` reads row 2, column 3 of each 8x8 image."""
    expected = [bool(image[2, 3] > 100) for image in _IMAGE]
    assert fires(table, "in.image[2][3] > 100") == expected
    assert fires(table, "in.image[7][7] == 63") == [True, False, False, False]


def test_index_past_the_end_gives_null_that_does_not_fire(table: pa.Table) -> None:
    """An index beyond a row's list gives null, which fires neither a test nor its negation."""
    assert fires(table, "in.items[2] == 3") == [True, False, False, False]
    assert fires(table, "not (in.items[2] == 3)") == [False, False, False, False]
    assert fires(table, "in.image[8][0] > 0 or in.image[0][9] > 0") == [False] * 4


def test_index_works_on_a_sliced_column(table: pa.Table) -> None:
    """A column that is a slice of a larger array is indexed from its own first row."""
    sliced = table.slice(1)
    assert fires(sliced, "in.items[0] == 7") == [False, True, False]


def test_quoted_and_shadow_column_names(table: pa.Table) -> None:
    """`out["output:0"]` names an odd column and `out_<challenger>.x` a shadow output."""
    assert fires(table, 'out["output:0"] > 2.5') == [False, False, True, True]
    assert fires(table, "out_challenger.dense_1[0] > 0.9") == [False, True, False, False]
    check = compile_check("c", "out_challenger.dense_1[0] > out['output:0'] and in.flag")
    assert check.columns == {"out_challenger.dense_1", "out.output:0", "in.flag"}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("in.amount > 1000", [True, False, False, True]),
        ("in.amount > 1.5e3", [True, False, False, True]),
        ("in.amount < 2E1", [False, True, False, False]),
        ("in.score < .75", [True, True, False, False]),
        ("in.score == 2.", [False, False, True, False]),
    ],
)
def test_number_literals(table: pa.Table, expr: str, expected: list[bool]) -> None:
    """Integers, decimals and scientific notation compare against int and float columns."""
    assert fires(table, expr) == expected


def test_boolean_column_and_literals(table: pa.Table) -> None:
    """A bool column is a check by itself and compares with `true` / `false`."""
    assert fires(table, "in.flag") == [True, False, False, True]
    assert fires(table, "in.flag == false") == [False, True, False, False]
    assert fires(table, "in.flag != true") == [False, True, False, False]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("in.amount == 10", [False, True, False, False]),
        ("in.amount != 10", [True, False, False, True]),
        ("in.amount < 2000", [False, True, False, False]),
        ("in.amount <= 2000", [True, True, False, False]),
        ("in.amount > 2000", [False, False, False, True]),
        ("in.amount >= 2000", [True, False, False, True]),
    ],
)
def test_comparisons(table: pa.Table, expr: str, expected: list[bool]) -> None:
    """Each comparison operator compares row by row; a null operand does not fire."""
    assert fires(table, expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("in.amount + 1 == 11", [False, True, False, False]),
        ("in.amount - 10 == 0", [False, True, False, False]),
        ("in.amount * 2 == 4000", [True, False, False, False]),
        ("in.amount / 4 == 2.5", [False, True, False, False]),
        ("-in.score > 1", [False, True, False, False]),
        ("in.score * -2 == -1", [True, False, False, False]),
    ],
)
def test_arithmetic(table: pa.Table, expr: str, expected: list[bool]) -> None:
    """`+ - * /` and unary minus work on columns; `/` is float division even for integers."""
    assert fires(table, expr) == expected


def test_division_by_zero_does_not_raise(table: pa.Table) -> None:
    """Dividing by zero gives inf or nan rather than an error."""
    assert fires(table, "in.amount / 0 > 1e308") == [True, True, False, True]
    assert fires(table, "in.amount / (in.amount - in.amount) > 0") == [True, True, False, True]
    assert fires(table, "(in.amount - in.amount) / 0 >= 0") == [False] * 4
    assert fires(table, "1 / 0 > 1") == [True] * 4


def test_precedence(table: pa.Table) -> None:
    """`*` binds tighter than `+`, arithmetic than comparisons, then not, and, or."""
    assert fires(table, "in.amount + 2 * 5 == 2010") == [True, False, False, False]
    assert fires(table, "(in.amount + 2) * 5 == 10010") == [True, False, False, False]
    assert fires(table, "in.amount - 10 - 10 == -10") == [False, True, False, False]
    assert fires(table, "not in.amount > 1000") == [False, True, False, False]
    # or(flag, and(false, ...)) -- not and(or(flag, false), ...)
    assert fires(table, "in.flag or false and in.amount > 0") == [True, False, False, True]
    assert fires(table, "not in.flag and in.amount > 0") == [False, True, False, False]


def test_and_or_not_with_nulls(table: pa.Table) -> None:
    """Kleene logic: null and false is false, null or true is true, other nulls do not fire."""
    assert fires(table, "in.flag and in.amount > 1000") == [True, False, False, True]
    assert fires(table, "in.flag or in.amount > 0") == [True, True, False, True]
    assert fires(table, "in.score > 100 or not (in.score > 100)") == [True, True, True, False]


def test_abs_and_the_brief_example(table: pa.Table) -> None:
    """`abs` works inside a compound check."""
    assert fires(table, "abs(in.score) > 1") == [False, True, True, False]
    expr = "in.amount > 1000 and not (abs(out.dense_1[0] - 0.5) < 0.1)"
    assert fires(table, expr) == [True, False, False, False]


def test_len(table: pa.Table) -> None:
    """`len` counts each row's list items, nulls included."""
    assert fires(table, "len(in.items) == 0") == [False, True, False, False]
    assert fires(table, "len(in.items) == 2") == [False, False, False, True]
    assert fires(table, "len(in.image[0]) == 8") == [True] * 4


def test_reductions(table: pa.Table) -> None:
    """`max`, `min` and `sum` reduce each row's list; null items are skipped."""
    assert fires(table, "max(out.dense_1) < 0.6") == [False, False, True, False]
    assert fires(table, "min(out.dense_1) < 0.1") == [True, False, False, False]
    assert fires(table, "sum(in.items) == 6") == [True, False, False, False]
    assert fires(table, "max(in.items) == 4 and min(in.items) == 4") == [False, False, False, True]


def test_reduction_of_an_empty_list_is_null(table: pa.Table) -> None:
    """An empty list reduces to null, so neither the test nor its negation fires."""
    assert fires(table, "sum(in.items) == 0") == [False] * 4
    assert fires(table, "not (max(in.items) > -1)") == [False] * 4


def test_reductions_match_python_on_ragged_lists() -> None:
    """On ragged lists with null rows and null items the result matches plain Python."""
    rng = np.random.default_rng(7)
    rows: list[list[float | None] | None] = []
    for k in rng.integers(0, 6, 300):
        row = [None if rng.random() < 0.1 else float(x) for x in rng.random(k)]
        rows.append(None if rng.random() < 0.05 else row)
    table = pa.table({"out.p": pa.array(rows, pa.list_(pa.float32()))}).slice(3)
    for name, fn in (("max", max), ("min", min), ("sum", sum)):
        expected = []
        for row in rows[3:]:
            items = [x for x in row or [] if x is not None]
            expected.append(bool(items) and float(np.float32(fn(items))) > 0.4)
        assert fires(table, f"{name}(out.p) > 0.4") == expected, name


def test_constant_expression_broadcasts(table: pa.Table) -> None:
    """A constant expression gives one value per row."""
    assert fires(table, "1 > 0") == [True] * 4
    assert fires(table, "-(2 * 3) == -6 and not false") == [True] * 4
    assert fires(table, "true and 1 > 2") == [False] * 4


def test_chunked_columns_are_accepted() -> None:
    """A source that returns chunked arrays gives the same answer as one with plain arrays."""
    column = pa.chunked_array([pa.array([[0.95], [0.1]]), pa.array([[0.99]])])
    result = compile_check("c", "out.p[0] > 0.9")(lambda name: column, 3)
    assert result.to_pylist() == [True, False, True]


def test_columns_lists_every_reference() -> None:
    """`Check.columns` holds each column reference once, dotted as written."""
    check = compile_check("c", "max(out.p) > 0.5 and out.p[0] < in.x and len(in.items) > 0")
    assert isinstance(check, Check)
    assert check.columns == {"out.p", "in.x", "in.items"}
    assert (check.name, check.expr) == (
        "c",
        "max(out.p) > 0.5 and out.p[0] < in.x and len(in.items) > 0",
    )


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os')", "unknown function '__import__' (allowed: abs, len, max, min, sum)"),
        ("exec('1')", "unknown function 'exec'"),
        ("open('f')", "unknown function 'open'"),
        ("eval(in.x)", "unknown function 'eval'"),
        ("in.x.__class__", "attribute access is not supported after 'in.x' at position 4"),
        ("lambda: 1", "'lambda' is not a column reference (write in.<name> or out.<name>)"),
        ("__import__", "'__import__' is not a column reference"),
        ("in.x; 1", "unexpected character ';' at position 4"),
        ("in.x @ 1", "unexpected character '@'"),
        ("in.x = 1", "unexpected character '='"),
        ("'rm -rf'", "string literals are not supported"),
        ('in.name == "bob"', "string literals are not supported"),
        ('in.x == "open', "unterminated string"),
        ("out.x > (1", "expected ')', found the end of the expression at position 10"),
        ("(out.x > 1))", "expected an operator or the end of the expression, found ')'"),
        ("abs(in.x > 1", "expected ')'"),
        ("in.a < in.b < 1", "comparisons cannot be chained"),
        ("in.x[-1] > 0", "only non-negative indexes are supported"),
        ("in.x[1.5] > 0", "expected a non-negative integer index, found '1.5'"),
        ("in.x[in.i] > 0", "expected a non-negative integer index"),
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("in.x > 1 in.y", "expected an operator or the end of the expression, found 'in'"),
        ("in.x > 1 2", "found '2' at position 9"),
        ("in.x + 1", "the expression gives a number, not true/false"),
        ("max(in.x, in.y) > 1", "max() takes exactly one argument"),
        ("len() > 1", "len() takes one argument"),
        ("max(3) > 1", "max() takes a list column, not a number"),
        ("not 1", "'not' takes true/false, not a number"),
        ("in.x > 1 and 2", "'and' takes true/false, not a number"),
        ("1 + (in.x > 1) > 0", "'+' takes numbers, not a bool"),
        ("true == 1", "'==' cannot take bool and int64"),
        ("in > 1", "expected '.' or '[' after 'in'"),
        ("in. > 1", "expected a column name"),
        ("x.y > 1", "'x' is not a column reference"),
        ("99999999999999999999 > in.x", "integer 99999999999999999999 is too large"),
    ],
)
def test_rejected_expressions_say_what_is_wrong(expr: str, message: str) -> None:
    """Anything outside the grammar is a ConfigError naming the check, the problem and the text."""
    with pytest.raises(ConfigError) as caught:
        compile_check("fraud", expr)
    text = str(caught.value)
    assert text.startswith("check 'fraud': ")
    assert message in text
    assert f'in "{expr}"' in text


def test_missing_column_is_a_step_error_listing_the_columns(table: pa.Table) -> None:
    """A column that does not exist names the check, the column and the available columns."""
    check = compile_check("fraud", "out.x > 1")
    with pytest.raises(StepError) as caught:
        check(table.column, table.num_rows, available=["in.b", "in.a"])
    assert (
        str(caught.value) == "check 'fraud': column 'out.x' does not exist; available: in.a, in.b"
    )


def test_operator_on_the_wrong_type_is_a_step_error(table: pa.Table) -> None:
    """An operator that cannot take a column's type names the check, sub-expression and type."""
    with pytest.raises(StepError) as caught:
        fires(table, "out.dense_1 > 1")
    assert "'>' cannot take list<item: float> and int64 in 'out.dense_1 > 1'" in str(caught.value)
    with pytest.raises(StepError, match=r"max\(\) cannot take int64 in 'max\(in.amount\)'"):
        fires(table, "max(in.amount) > 1")
    with pytest.raises(StepError, match=r"'\[0\]' cannot take int64 in 'in.amount\[0\]'"):
        fires(table, "in.amount[0] > 1")


def test_non_boolean_result_is_a_step_error(table: pa.Table) -> None:
    """A check whose value is not true/false at run time is a StepError naming the type."""
    with pytest.raises(StepError, match=r"'in\.amount' gives int64, not true/false"):
        fires(table, "in.amount")


def test_fixed_size_and_large_lists() -> None:
    """Indexing and reductions also work on fixed-size and large list columns."""
    columns = {
        "out.f": pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float64(), 2)),
        "in.l": pa.array([[1, 2], [], None], pa.large_list(pa.uint8())),
    }

    def run(expr: str) -> list[bool]:
        return list(compile_check("c", expr)(columns.__getitem__, 3).to_pylist())

    assert run("max(out.f) > 1.5") == [True, False, True]
    assert run("out.f[1] > 3 or out.f[2] > 0") == [False, False, True]
    assert run("sum(in.l) == 3 and in.l[1] == 2") == [True, False, False]
    assert run("len(in.l) == 0") == [False, True, False]
