"""A restricted expression language for specs (never `eval`).

Expressions use Python syntax but only an allow-listed subset of the AST: literals,
names (config fields), arithmetic, comparisons, boolean logic, `a if c else b`,
indexing, list/tuple displays, one-generator list comprehensions, and calls of a few
pure built-ins (`min`, `max`, `abs`, `int`, `float`, `bool`, `round`, `len`, `range`,
`sum`, `str`). No attribute access, no other calls, no lambdas, no dunder names.
Evaluation walks the tree itself; sizes and exponents are bounded so a hostile spec
cannot exhaust memory or time.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_SEQUENCE = 1_000_000
MAX_EXPONENT = 1024
MAX_SOURCE = 2000


class ExprError(Exception):
    """A problem with an expression; `offset` is the 0-based column inside the source."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _bounded_range(*args: Any) -> range:
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise ExprError("range() takes integers")
    r = range(*args)
    if len(r) > MAX_SEQUENCE:
        raise ExprError(f"range() longer than {MAX_SEQUENCE}")
    return r


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": int,
    "float": float,
    "bool": bool,
    "round": round,
    "len": len,
    "range": _bounded_range,
    "sum": sum,
    "str": str,
    "sqrt": math.sqrt,
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Name,
    ast.Constant, ast.List, ast.Tuple, ast.Subscript, ast.Slice, ast.Call, ast.ListComp,
    ast.comprehension, ast.Load, ast.Store, ast.And, ast.Or,
    *_BINOPS, *_UNARY, *_COMPARE,
)


@dataclass(frozen=True)
class Expr:
    """A parsed, checked expression. `names` are the free variables it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        return _Evaluator(env).visit(self.tree.body)


def _offset(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0)


def parse_expr(source: str) -> Expr:
    """Parse and check an expression; raise `ExprError` for anything not allowed."""
    if len(source) > MAX_SOURCE:
        raise ExprError(f"expression longer than {MAX_SOURCE} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"expression syntax error: {exc.msg}", _skip_spaces(source, (exc.offset or 1) - 1)) from None
    names: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ExprError(_describe_forbidden(node), _offset(node))
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                fname = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise ExprError(
                    f"call of `{fname}` is not allowed; allowed functions: {', '.join(sorted(FUNCTIONS))}",
                    _offset(node),
                )
            if node.keywords:
                raise ExprError("keyword arguments are not allowed in expressions", _offset(node))
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise ExprError(f"name `{node.id}` is not allowed (names may not start with `_`)", _offset(node))
            if isinstance(node.ctx, ast.Store):
                bound.add(node.id)
        if isinstance(node, ast.comprehension) and ((node.ifs and len(node.ifs) > 1) or node.is_async):
            raise ExprError("only simple comprehensions are allowed", _offset(node.target))
        if isinstance(node, ast.ListComp) and len(node.generators) != 1:
            raise ExprError("list comprehensions may have one `for` only", _offset(node))
        if isinstance(node, ast.comprehension) and not isinstance(node.target, ast.Name):
            raise ExprError("comprehension targets must be plain names", _offset(node.target))
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float | str | bool | type(None)):
            raise ExprError(f"constant {node.value!r} is not allowed", _offset(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in FUNCTIONS and _is_called(tree, node):
                continue
            if node.id not in bound and node.id not in ("True", "False", "None"):
                names.add(node.id)
    return Expr(source=source, tree=tree, names=frozenset(names))


def _skip_spaces(source: str, offset: int) -> int:
    offset = max(offset, 0)
    while offset < len(source) - 1 and source[offset] == " ":
        offset += 1
    return offset


def _is_called(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _describe_forbidden(node: ast.AST) -> str:
    kind = type(node).__name__
    if isinstance(node, ast.Attribute):
        return f"attribute access (`.{node.attr}`) is not allowed in expressions"
    if isinstance(node, ast.Lambda):
        return "lambda is not allowed in expressions"
    return (
        f"`{kind}` is not allowed in expressions; use literals, config names, arithmetic, "
        "comparisons, `and`/`or`/`not`, `a if c else b`, indexing and allowed calls"
    )


class _Evaluator:
    def __init__(self, env: Mapping[str, Any]) -> None:
        self.env = env
        self.local: dict[str, Any] = {}

    def visit(self, node: ast.AST) -> Any:
        try:
            return self._visit(node)
        except ExprError:
            raise
        except (ArithmeticError, TypeError, ValueError, IndexError, KeyError) as exc:
            raise ExprError(f"cannot evaluate `{ast.unparse(node)}`: {exc}", _offset(node)) from None

    def _visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.local:
                return self.local[node.id]
            if node.id in self.env:
                return self.env[node.id]
            if node.id in ("True", "False", "None"):
                return {"True": True, "False": False, "None": None}[node.id]
            raise ExprError(f"unknown name `{node.id}`", _offset(node))
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow) and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise ExprError(f"exponent larger than {MAX_EXPONENT}", _offset(node))
            if (isinstance(node.op, ast.Mult) and isinstance(left, str | list | tuple)) or (isinstance(
                right, str | list | tuple
            ) and isinstance(node.op, ast.Mult)):
                seq, n = (left, right) if isinstance(left, str | list | tuple) else (right, left)
                if isinstance(n, int) and len(seq) * n > MAX_SEQUENCE:
                    raise ExprError(f"sequence longer than {MAX_SEQUENCE}", _offset(node))
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self.visit(node.operand))
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                value: Any = True
                for v in node.values:
                    value = self.visit(v)
                    if not value:
                        return value
                return value
            value = False
            for v in node.values:
                value = self.visit(v)
                if value:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self.visit(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self.visit(comp)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)
        if isinstance(node, ast.List):
            return [self.visit(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.visit(e) for e in node.elts)
        if isinstance(node, ast.Subscript):
            target = self.visit(node.value)
            if isinstance(node.slice, ast.Slice):
                bounds = (node.slice.lower, node.slice.upper, node.slice.step)
                parts = [self.visit(p) if p is not None else None for p in bounds]
                return target[slice(*parts)]
            return target[self.visit(node.slice)]
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return FUNCTIONS[node.func.id](*[self.visit(a) for a in node.args])
        if isinstance(node, ast.ListComp):
            gen = node.generators[0]
            assert isinstance(gen.target, ast.Name)
            iterable = self.visit(gen.iter)
            if len(iterable) > MAX_SEQUENCE:
                raise ExprError(f"sequence longer than {MAX_SEQUENCE}", _offset(node))
            out = []
            saved = self.local.get(gen.target.id)
            for item in iterable:
                self.local[gen.target.id] = item
                if all(self.visit(cond) for cond in gen.ifs):
                    out.append(self.visit(node.elt))
            if saved is None:
                self.local.pop(gen.target.id, None)
            else:
                self.local[gen.target.id] = saved
            return out
        raise ExprError(f"`{type(node).__name__}` is not allowed", _offset(node))
