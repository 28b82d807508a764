"""The dataflow language of `forward:` and `layers.body:` statements.

A statement is `name = expression` in Python syntax, where the expression combines
tensor variables with module calls `mod(a, b)`, `+ - * /`, and scalar sub-expressions
over config names (folded to constants). Statements are parsed once, when the spec is
compiled (`spec/compile.py`, which hands in the expression parser), into a small AST
(`Stmt`) checked against the names in scope; `graph/` unrolls them into a flat program.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from .expr import Expr, ExprError, skip_spaces

FORWARD_INPUT = "tokens"
FORWARD_OUTPUT = "logits"
BODY_VAR = "x"
STACK = "layers"
LAYER_INDEX = "i"

#: the expression parser, handed in by `spec/compile.py` (the one place that parses spec text)
Parse = Callable[[str], Expr]

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}


@dataclass(frozen=True)
class Var:
    name: str
    offset: int


@dataclass(frozen=True)
class Scalar:
    """A scalar expression over config names, folded when the config is known."""

    expr: Expr
    offset: int

    @property
    def source(self) -> str:
        return self.expr.source


@dataclass(frozen=True)
class Call:
    module: str
    args: tuple[Node, ...]
    offset: int


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Node
    right: Node
    offset: int


@dataclass(frozen=True)
class Cond:
    """`a if test else b` with tensor branches; the test is a scalar config expression (the
    layer index `i` included), so the branch is chosen when the stack is unrolled."""

    test: Scalar
    body: Node
    orelse: Node
    offset: int


Node = Union[Var, Scalar, Call, BinOp, Cond]  # noqa: UP007 - recursive alias


@dataclass(frozen=True)
class Stmt:
    target: str
    value: Node
    index: int = 0  # position in its statement list (for locating errors found later)


@dataclass(frozen=True)
class Scope:
    """Names a statement list may use."""

    modules: frozenset[str]
    config: frozenset[str]
    inputs: tuple[str, ...]
    callables: frozenset[str] = frozenset()  # e.g. `layers` in forward


def parse_statements(lines: list[str], scope: Scope, parse: Parse) -> list[Stmt | ExprError]:
    """Parse each line; a bad line gives an `ExprError` in its place (offset inside the line)."""
    known_vars = set(scope.inputs)
    out: list[Stmt | ExprError] = []
    for index, line in enumerate(lines):
        try:
            stmt = _Parser(line, scope, known_vars, parse).statement(index)
        except ExprError as exc:
            out.append(exc)
            continue
        known_vars.add(stmt.target)
        out.append(stmt)
    return out


class _Parser:
    def __init__(self, line: str, scope: Scope, known: set[str], parse: Parse) -> None:
        self.line, self.scope, self.known, self.parse = line, scope, known, parse

    def statement(self, index: int) -> Stmt:
        line, scope = self.line, self.scope
        try:
            tree = ast.parse(line, mode="exec")
        except SyntaxError as exc:
            raise ExprError(f"statement syntax error: {exc.msg}", skip_spaces(line, (exc.offset or 1) - 1)) from None
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign):
            raise ExprError("a dataflow statement is `name = expression`", 0)
        assign = tree.body[0]
        if len(assign.targets) != 1 or not isinstance(assign.targets[0], ast.Name):
            raise ExprError("assign to one plain name", 0)
        target = assign.targets[0].id
        if target in scope.modules or target in scope.config or target in scope.callables:
            raise ExprError(f"`{target}` is a module or config name; pick another variable name", 0)
        value = self.node(assign.value)
        if isinstance(value, Scalar):
            raise ExprError(
                f"`{target} = {value.source}` assigns a constant: a statement must compute a tensor "
                "(call a module, or combine tensor variables with + - * /)",
                assign.value.col_offset,
            )
        return Stmt(target, value, index)

    def scalar(self, source: str, off: int) -> Scalar:
        try:
            expr = self.parse(source)
        except ExprError as exc:
            raise ExprError(exc.message, off + exc.offset) from None
        bad = sorted(expr.names - self.scope.config)
        if bad:
            raise ExprError(_unknown(bad[0], self.scope, self.known), off)
        return Scalar(expr, off)

    def node(self, e: ast.expr) -> Node:
        scope, known, line = self.scope, self.known, self.line
        off = e.col_offset
        if isinstance(e, ast.Name):
            if e.id in known:
                return Var(e.id, off)
            if e.id in scope.config:
                return self.scalar(e.id, off)
            if e.id in scope.modules or e.id in scope.callables:
                raise ExprError(f"module `{e.id}` must be called: `{e.id}(...)`", off)
            raise ExprError(_unknown(e.id, scope, known), off)
        if isinstance(e, ast.Call):
            if not isinstance(e.func, ast.Name):
                raise ExprError("only modules can be called: `module(args)`", off)
            if e.func.id not in scope.modules and e.func.id not in scope.callables:
                raise ExprError(_unknown(e.func.id, scope, known, module=True), off)
            if e.keywords:
                raise ExprError("module calls take positional arguments only", off)
            if len(e.args) != 1 or isinstance(e.args[0], ast.Starred):
                raise ExprError(f"`{e.func.id}` takes exactly one tensor argument, got {len(e.args)}", off)
            arg = self.node(e.args[0])
            if isinstance(arg, Scalar):
                raise ExprError(f"`{e.func.id}` takes a tensor, got the constant `{arg.source}`", e.args[0].col_offset)
            return Call(e.func.id, (arg,), off)
        if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
            left, right = self.node(e.left), self.node(e.right)
            if isinstance(left, Scalar) and isinstance(right, Scalar):
                return self.scalar(ast.get_source_segment(line, e) or "", off)
            return BinOp(_BINOPS[type(e.op)], left, right, off)
        if isinstance(e, ast.IfExp):
            return self.cond(e)
        # anything else must be a pure scalar expression over config names
        return self.scalar(ast.get_source_segment(line, e) or "", off)

    def cond(self, e: ast.IfExp) -> Node:
        test = self.node(e.test)
        if not isinstance(test, Scalar):
            raise ExprError(
                "the condition of `a if condition else b` is a config expression, not a tensor", e.test.col_offset
            )
        body, orelse = self.node(e.body), self.node(e.orelse)
        if isinstance(body, Scalar) and isinstance(orelse, Scalar):
            return self.scalar(ast.get_source_segment(self.line, e) or "", e.col_offset)
        return Cond(test, body, orelse, e.col_offset)


def _unknown(name: str, scope: Scope, known: set[str], module: bool = False) -> str:
    from ..errors import closest

    if module:
        return f"unknown module `{name}`; " + closest(name, scope.modules | scope.callables)
    return f"unknown name `{name}`; " + closest(name, known | scope.config)
