"""The dataflow language of `forward:` and `layers.body:` statements.

A statement is `name = expression` in Python syntax, where the expression combines
tensor variables with module calls `mod(a, b)`, `+ - * /`, and scalar sub-expressions
over config names (folded to constants). Statements are parsed once into a small AST
(`Stmt`), checked against the names in scope, and later unrolled into a flat program.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Union

from ..spec.expr import ExprError, _skip_spaces, parse_expr

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}


@dataclass(frozen=True)
class Var:
    name: str
    offset: int


@dataclass(frozen=True)
class Scalar:
    """A scalar expression over config names, folded when the config is known."""

    source: str
    offset: int


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


def parse_statements(lines: list[str], scope: Scope) -> list[Stmt | ExprError]:
    """Parse each line; a bad line gives an `ExprError` in its place (offset inside the line)."""
    known_vars = set(scope.inputs)
    out: list[Stmt | ExprError] = []
    for index, line in enumerate(lines):
        try:
            stmt = _parse_line(line, scope, known_vars, index)
        except ExprError as exc:
            out.append(exc)
            continue
        known_vars.add(stmt.target)
        out.append(stmt)
    return out


def _parse_line(line: str, scope: Scope, known_vars: set[str], index: int = 0) -> Stmt:
    try:
        tree = ast.parse(line, mode="exec")
    except SyntaxError as exc:
        raise ExprError(f"statement syntax error: {exc.msg}", _skip_spaces(line, (exc.offset or 1) - 1)) from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assign):
        raise ExprError("a dataflow statement is `name = expression`", 0)
    assign = tree.body[0]
    if len(assign.targets) != 1 or not isinstance(assign.targets[0], ast.Name):
        raise ExprError("assign to one plain name", 0)
    target = assign.targets[0].id
    if target in scope.modules or target in scope.config or target in scope.callables:
        raise ExprError(f"`{target}` is a module or config name; pick another variable name", 0)
    value = _node(assign.value, line, scope, known_vars)
    if isinstance(value, Scalar):
        raise ExprError(
            f"`{target} = {value.source}` assigns a constant: a statement must compute a tensor "
            "(call a module, or combine tensor variables with + - * /)",
            assign.value.col_offset,
        )
    return Stmt(target, value, index)


def _node(e: ast.expr, line: str, scope: Scope, known: set[str]) -> Node:
    off = e.col_offset
    if isinstance(e, ast.Name):
        if e.id in known:
            return Var(e.id, off)
        if e.id in scope.config:
            return Scalar(e.id, off)
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
        arg = _node(e.args[0], line, scope, known)
        if isinstance(arg, Scalar):
            raise ExprError(f"`{e.func.id}` takes a tensor, got the constant `{arg.source}`", e.args[0].col_offset)
        return Call(e.func.id, (arg,), off)
    if isinstance(e, ast.BinOp) and type(e.op) in _BINOPS:
        left, right = _node(e.left, line, scope, known), _node(e.right, line, scope, known)
        if isinstance(left, Scalar) and isinstance(right, Scalar):
            return Scalar(ast.get_source_segment(line, e) or "", off)
        return BinOp(_BINOPS[type(e.op)], left, right, off)
    if isinstance(e, ast.IfExp):
        return _cond(e, line, scope, known)
    # anything else must be a pure scalar expression over config names
    source = ast.get_source_segment(line, e) or ""
    try:
        expr = parse_expr(source)
    except ExprError as exc:
        raise ExprError(exc.message, off + exc.offset) from None
    bad = sorted(expr.names - scope.config)
    if bad:
        raise ExprError(_unknown(bad[0], scope, known), off)
    return Scalar(source, off)


def _cond(e: ast.IfExp, line: str, scope: Scope, known: set[str]) -> Node:
    test = _node(e.test, line, scope, known)
    if not isinstance(test, Scalar):
        raise ExprError(
            "the condition of `a if condition else b` is a config expression, not a tensor", e.test.col_offset
        )
    body, orelse = _node(e.body, line, scope, known), _node(e.orelse, line, scope, known)
    if isinstance(body, Scalar) and isinstance(orelse, Scalar):
        return Scalar(ast.get_source_segment(line, e) or "", e.col_offset)
    return Cond(test, body, orelse, e.col_offset)


def _unknown(name: str, scope: Scope, known: set[str], module: bool = False) -> str:
    from ..errors import closest

    if module:
        return f"unknown module `{name}`; " + closest(name, scope.modules | scope.callables)
    return f"unknown name `{name}`; " + closest(name, known | scope.config)
