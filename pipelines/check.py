"""Checks: named boolean expressions over result columns, compiled once into Arrow compute.

A check such as ``out.dense_1[0] > 0.9`` is tokenized and parsed by hand (recursive descent)
into a tree of small nodes, each calling one ``pyarrow.compute`` function on whole columns.
The text is never handed to ``eval``, ``exec``, ``compile`` or ``ast``: the grammar is closed,
and anything outside it is a ``ConfigError`` that names the expression and the position
(a 0-based character offset). Grammar, loosest binding first::

    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := sum [("==" | "!=" | "<" | "<=" | ">" | ">=") sum]     -- never chained
    sum        := product (("+" | "-") product)*
    product    := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := NUMBER | "true" | "false" | "(" or ")" | FUNCTION "(" or ")" | column
    column     := PREFIX ("." NAME | "[" STRING "]") ("[" INTEGER "]")*
    PREFIX     := "in" | "out" | "out_" NAME
    FUNCTION   := "abs" | "len" | "max" | "min" | "sum"

Nulls propagate (``and``/``or`` use Kleene logic) and a null result counts as not firing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import ConfigError, StepError
from pipelines.tensors import one_array

__all__ = ["Check", "ColumnSource", "compile_check"]

ColumnSource: TypeAlias = Callable[[str], pa.Array | pa.ChunkedArray]
"""Resolves a dotted column name such as ``"out.dense_1"``; raises ``KeyError`` when missing."""

_Value: TypeAlias = "pa.Array | pa.Scalar"
_Kind: TypeAlias = Literal["bool", "number", "any"]
_Node: TypeAlias = "_Literal | _Column | _Apply"


class _OperandError(Exception):
    """An operator met values it cannot take; the check adds its own name to the message."""


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str
    kind: _Kind
    value: pa.Scalar

    def evaluate(self, columns: Mapping[str, pa.Array]) -> _Value:
        return self.value


@dataclass(frozen=True, slots=True)
class _Column:
    text: str
    name: str
    kind: _Kind = "any"

    def evaluate(self, columns: Mapping[str, pa.Array]) -> _Value:
        return columns[self.name]


@dataclass(frozen=True, slots=True)
class _Apply:
    """An operator, function or index applied to the values of its operands."""

    text: str
    kind: _Kind
    label: str  # how messages name the operator: "'>'", "max()", "'[2]'"
    function: Callable[..., _Value]
    operands: tuple[_Node, ...]

    def evaluate(self, columns: Mapping[str, pa.Array]) -> _Value:
        values = [operand.evaluate(columns) for operand in self.operands]
        try:
            return self.function(*values)
        except pa.ArrowException as exc:  # a kernel refused the types (or overflowed)
            types = " and ".join(str(value.type) for value in values)
            detail = "" if isinstance(exc, pa.ArrowNotImplementedError) else f": {exc}"
            message = f"{self.label} cannot take {types} in {self.text!r}{detail}"
            raise _OperandError(message) from exc


def _divide(left: _Value, right: _Value) -> _Value:
    """Float division: integers are cast first, so dividing by zero gives inf or nan."""
    left, right = (
        v if pa.types.is_floating(v.type) else pc.cast(v, pa.float64()) for v in (left, right)
    )
    return pc.divide(left, right)


def _has_offsets(kind: pa.DataType) -> bool:
    """Whether ``kind`` is a list whose rows are contiguous runs between offsets."""
    return bool(pa.types.is_list(kind) or pa.types.is_large_list(kind))


def _element(value: _Value, index: int) -> _Value:
    """Item ``index`` of each row's list; null where the list is null or too short."""
    kind = value.type
    if pa.types.is_fixed_size_list(kind) and index >= kind.list_size:
        return pa.nulls(len(value), kind.value_type)
    if not _has_offsets(kind):
        return pc.list_element(value, index)  # fixed-size lists; anything else is refused
    offsets = value.offsets.to_numpy()
    short = np.diff(offsets) <= index
    if value.null_count:
        short |= value.is_null().to_numpy(zero_copy_only=False)
    positions = pa.array(offsets[:-1] + index, mask=short if short.any() else None)
    return value.values.take(positions)


def _reduce(ufunc: np.ufunc, value: _Value) -> _Value:
    """Reduce each row's list of numbers with ``ufunc``; null for an empty or all-null list."""
    items = pc.list_flatten(value)
    if not (pa.types.is_integer(items.type) or pa.types.is_floating(items.type)):
        raise pa.ArrowNotImplementedError(f"items of type {items.type} are not numbers")
    if value.null_count == 0 and items.null_count == 0 and _has_offsets(value.type):
        offsets = value.offsets.to_numpy()  # the common case: runs straight from the offsets
        present = np.diff(offsets) > 0
        starts = (offsets[:-1] - offsets[0])[present]
    else:
        rows = pc.list_parent_indices(value).to_numpy()
        if items.null_count:
            rows = rows[pc.is_valid(items).to_numpy(zero_copy_only=False)]
            items = items.drop_null()
        starts = np.flatnonzero(np.diff(rows, prepend=-1))  # rows are sorted: a run per list
        present = rows[starts]
    numbers = items.to_numpy()
    if ufunc is np.add and numbers.dtype.kind in "iu":
        numbers = numbers.astype(np.int64 if numbers.dtype.kind == "i" else np.uint64)
    out = np.zeros(len(value), numbers.dtype)
    missing = np.ones(len(value), np.bool_)
    if len(numbers):
        out[present] = ufunc.reduceat(numbers, starts)
        missing[present] = False
    return pa.array(out, mask=missing if missing.any() else None)


_FUNCTIONS: dict[str, Callable[..., _Value]] = {
    "abs": pc.abs,
    "len": pc.list_value_length,
    "max": functools.partial(_reduce, np.maximum),
    "min": functools.partial(_reduce, np.minimum),
    "sum": functools.partial(_reduce, np.add),
}
_COMPARISONS: dict[str, Callable[..., _Value]] = {
    "==": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}
_OR = {"or": pc.or_kleene}
_AND = {"and": pc.and_kleene}
_SUM = {"+": pc.add, "-": pc.subtract}
_PRODUCT = {"*": pc.multiply, "/": _divide}
_PREFIX = re.compile(r"in|out|out_[A-Za-z0-9_]+")
_TOKEN = re.compile(
    r"(?P<space>\s+)"
    r"|(?P<number>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>\"[^\"]*\"|'[^']*')"
    r"|(?P<op>==|!=|<=|>=|[-+*/<>()\[\].,])",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number, name, string, op, bad (a character outside the grammar), end
    text: str
    pos: int


def _tokenize(expr: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            tokens.append(_Token("bad", expr[pos], pos))
            break
        if match.lastgroup != "space":
            tokens.append(_Token(str(match.lastgroup), match.group(), pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(expr)))
    return tokens


class _Parser:
    """Recursive descent over the tokens of one expression; collects the column names."""

    def __init__(self, name: str, expr: str) -> None:
        self._name, self._expr = name, expr
        self._tokens = _tokenize(expr)
        self._at = 0
        self._end = 0  # where the last consumed token ends: node text is expr[start:_end]
        self.columns: set[str] = set()

    def parse(self) -> _Node:
        if self._peek().kind == "end":
            raise self._error("empty expression", 0)
        node = self._or()
        if self._peek().kind != "end":
            raise self._fail(self._peek(), "an operator or the end of the expression")
        if node.kind == "number":
            message = (
                f"the expression gives a number, not true/false (compare it: '{node.text} > 0')"
            )
            raise self._error(message, 0)
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _advance(self) -> _Token:
        token = self._tokens[self._at]
        if token.kind != "end":
            self._at += 1
            self._end = token.pos + len(token.text)
        return token

    def _at_op(self, operators: Iterable[str]) -> bool:
        token = self._peek()
        return token.kind in ("op", "name") and token.text in operators

    def _expect(self, text: str) -> None:
        if not self._at_op((text,)):
            raise self._fail(self._peek(), repr(text))
        self._advance()

    def _error(self, message: str, pos: int) -> ConfigError:
        text = f'check {self._name!r}: {message} at position {pos} in "{self._expr}"'
        return ConfigError(text, step=self._name)

    def _fail(self, token: _Token, expected: str) -> ConfigError:
        if token.kind == "bad":
            quote = token.text in "\"'"
            what = "unterminated string" if quote else f"unexpected character {token.text!r}"
        elif token.kind == "string":
            what = "string literals are not supported (a quoted string only names a column)"
        elif token.kind == "end":
            what = f"expected {expected}, found the end of the expression"
        else:
            what = f"expected {expected}, found {token.text!r}"
        return self._error(what, token.pos)

    def _require(self, node: _Node, want: _Kind, label: str, pos: int) -> None:
        if node.kind not in (want, "any"):
            wanted = {"bool": "true/false", "number": "numbers", "any": "a list column"}[want]
            raise self._error(f"{label} takes {wanted}, not a {node.kind} ({node.text!r})", pos)

    def _or(self) -> _Node:
        return self._binary(_OR, "bool", self._and)

    def _and(self) -> _Node:
        return self._binary(_AND, "bool", self._not)

    def _binary(
        self, operators: dict[str, Callable[..., _Value]], kind: _Kind, operand: Callable[[], _Node]
    ) -> _Node:
        start = self._peek().pos
        left = operand()
        while self._at_op(operators):
            token = self._advance()
            right = operand()
            for side in (left, right):
                self._require(side, kind, f"{token.text!r}", token.pos)
            left = self._node(start, repr(token.text), kind, operators[token.text], left, right)
        return left

    def _not(self) -> _Node:
        token = self._peek()
        if not self._at_op(("not",)):
            return self._comparison()
        self._advance()
        operand = self._not()
        self._require(operand, "bool", "'not'", token.pos)
        return self._node(token.pos, "'not'", "bool", pc.invert, operand)

    def _comparison(self) -> _Node:
        start = self._peek().pos
        left = self._sum()
        if not self._at_op(_COMPARISONS):
            return left
        op = self._advance().text
        node = self._node(start, repr(op), "bool", _COMPARISONS[op], left, self._sum())
        if self._at_op(_COMPARISONS):
            message = "comparisons cannot be chained (write 'a < b and b < c')"
            raise self._error(message, self._peek().pos)
        return node

    def _sum(self) -> _Node:
        return self._binary(_SUM, "number", self._product)

    def _product(self) -> _Node:
        return self._binary(_PRODUCT, "number", self._unary)

    def _unary(self) -> _Node:
        token = self._peek()
        if not (token.kind == "op" and token.text == "-"):
            return self._primary()
        self._advance()
        operand = self._unary()
        self._require(operand, "number", "'-'", token.pos)
        return self._node(token.pos, "'-'", "number", pc.negate, operand)

    def _primary(self) -> _Node:
        token = self._advance()
        if token.kind == "number":
            return self._number(token)
        if token.kind == "name" and token.text in ("true", "false"):
            return _Literal(token.text, "bool", pa.scalar(token.text == "true"))
        if token.kind == "op" and token.text == "(":
            node = self._or()
            self._expect(")")
            return node
        if token.kind == "name" and self._at_op(("(",)):
            return self._call(token)
        if token.kind == "name":
            return self._column(token)
        raise self._fail(token, "a number, a column, a function or '('")

    def _number(self, token: _Token) -> _Node:
        if not token.text.isdigit():
            return _Literal(token.text, "number", pa.scalar(float(token.text), pa.float64()))
        if int(token.text) >= 2**63:
            raise self._error(f"integer {token.text} is too large", token.pos)
        return _Literal(token.text, "number", pa.scalar(int(token.text), pa.int64()))

    def _call(self, token: _Token) -> _Node:
        if token.text not in _FUNCTIONS:
            allowed = ", ".join(_FUNCTIONS)
            raise self._error(f"unknown function {token.text!r} (allowed: {allowed})", token.pos)
        self._advance()
        if self._at_op((")",)):
            raise self._error(f"{token.text}() takes one argument", self._peek().pos)
        argument = self._or()
        if self._at_op((",",)):
            raise self._error(f"{token.text}() takes exactly one argument", self._peek().pos)
        self._expect(")")
        self._require(
            argument, "number" if token.text == "abs" else "any", f"{token.text}()", token.pos
        )
        return self._node(token.pos, f"{token.text}()", "number", _FUNCTIONS[token.text], argument)

    def _column(self, prefix: _Token) -> _Node:
        if not _PREFIX.fullmatch(prefix.text):
            message = f"{prefix.text!r} is not a column reference (write in.<name> or out.<name>)"
            raise self._error(message, prefix.pos)
        token = self._advance()
        if token.kind == "op" and token.text == ".":
            name = self._advance()
            if name.kind != "name":
                raise self._fail(name, "a column name")
            column = name.text
        elif token.kind == "op" and token.text == "[":
            name = self._advance()
            if name.kind != "string" or len(name.text) < 3:
                raise self._fail(name, 'a quoted column name, as in out["output:0"]')
            column = name.text[1:-1]
            self._expect("]")
        else:
            raise self._fail(token, f"'.' or '[' after {prefix.text!r}")
        self.columns.add(f"{prefix.text}.{column}")
        node: _Node = _Column(self._expr[prefix.pos : self._end], f"{prefix.text}.{column}")
        while self._at_op(("[",)):
            self._advance()
            index = self._advance()
            if index.kind == "op" and index.text == "-":
                raise self._error("only non-negative indexes are supported", index.pos)
            if not (index.kind == "number" and index.text.isdigit()):
                raise self._fail(index, "a non-negative integer index")
            self._expect("]")
            element = functools.partial(_element, index=int(index.text))
            node = self._node(prefix.pos, f"'[{index.text}]'", "any", element, node)
        if self._at_op((".",)):
            message = f"attribute access is not supported after {node.text!r}"
            raise self._error(message, self._peek().pos)
        return node

    def _node(
        self, start: int, label: str, kind: _Kind, function: Callable[..., _Value], *operands: _Node
    ) -> _Node:
        """An operator node; folded to a literal now when every operand is a literal."""
        node = _Apply(self._expr[start : self._end], kind, label, function, operands)
        if not all(isinstance(operand, _Literal) for operand in operands):
            return node
        try:
            return _Literal(node.text, kind, node.evaluate({}))
        except _OperandError as exc:
            raise self._error(str(exc), start) from exc


@dataclass(frozen=True, slots=True)
class Check:
    """A compiled check; calling it gives, per row, whether the check fires."""

    name: str
    expr: str
    columns: frozenset[str]  # every column reference, dotted as written: "in.x", "out_c.y"
    _root: _Node = field(repr=False, compare=False)

    def __call__(
        self, source: ColumnSource, num_rows: int, *, available: Iterable[str] | None = None
    ) -> pa.BooleanArray:
        """True where the check fires, null counting as False; ``available`` names the columns
        a missing-column error lists (pass ``table.column_names``)."""
        columns = {
            column: self._resolve(source, column, num_rows, available)
            for column in sorted(self.columns)
        }
        try:
            value = self._root.evaluate(columns)
        except _OperandError as exc:
            raise StepError(f"check {self.name!r}: {exc}", step=self.name) from exc
        if not pa.types.is_boolean(value.type):
            message = f"check {self.name!r}: {self.expr!r} gives {value.type}, not true/false"
            raise StepError(message, step=self.name)
        if isinstance(value, pa.Scalar):
            return pa.repeat(pa.scalar(bool(value.as_py())), num_rows)
        return value.fill_null(False) if value.null_count else value

    def _resolve(
        self, source: ColumnSource, column: str, num_rows: int, available: Iterable[str] | None
    ) -> pa.Array:
        try:
            value = source(column)
        except KeyError as exc:
            names = ", ".join(sorted(available)) if available is not None else "(not given)"
            message = f"check {self.name!r}: column {column!r} does not exist; available: {names}"
            raise StepError(message, step=self.name) from exc
        if isinstance(value, pa.ChunkedArray):
            value = one_array(value)
        if len(value) != num_rows:
            message = (
                f"check {self.name!r}: column {column!r} has {len(value)} rows, not {num_rows}"
            )
            raise StepError(message, step=self.name)
        return value


def compile_check(name: str, expr: str) -> Check:
    """Parse ``expr`` once into a :class:`Check`; ``ConfigError`` names any syntax problem."""
    parser = _Parser(name, expr)
    root = parser.parse()
    return Check(name, expr, frozenset(parser.columns), root)
