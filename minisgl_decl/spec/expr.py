"""A restricted expression language for specs (never `eval`).

Expressions use Python syntax but only an allow-listed subset of the AST: literals,
names (config fields), arithmetic, comparisons, boolean logic, `a if c else b`,
indexing, list/tuple displays, one-generator list comprehensions, and calls of a few
pure built-ins (`min`, `max`, `abs`, `int`, `float`, `bool`, `round`, `len`, `range`,
`sum`, `str`). No attribute access, no other calls, no lambdas, no dunder names.
Evaluation walks the tree itself under a cost budget checked *before* each operation:
evaluation steps (comprehension iterations included), syntax-tree depth, the size of
every value built (list items and characters, counted deeply) and the bit length of
every integer, plus argument bounds for `round`, `sum` and `range`; so a hostile spec
cannot exhaust memory or time. The limits live in `minisgl_decl.limits`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..limits import hint, limit

MAX_EXPONENT = 1024
MAX_SOURCE = 2000
MAX_ROUND_DIGITS = 1000


class ExprError(Exception):
    """A problem with an expression; `offset` is the 0-based column inside the source."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _size(value: Any, cap: int) -> int:
    """Roughly how many items/characters `value` holds when spelled out (str()), counted deeply; stops past `cap`."""
    total = 0
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            total += len(x) + 2
        elif isinstance(x, list | tuple):
            total += 2 + 2 * len(x)
            if total > cap:
                return total
            stack.extend(x)
        elif isinstance(x, int):
            total += x.bit_length() // 3 + 2
        elif isinstance(x, range):
            total += 24
        else:
            total += 24
        if total > cap:
            return total
    return total


def _check_size(value: Any, what: str = "value") -> Any:
    cap = limit("MAX_EXPR_SIZE")
    if _size(value, cap) > cap:
        raise ExprError(f"{what} too large {hint('MAX_EXPR_SIZE')}")
    return value


def _bounded_range(*args: Any) -> range:
    if not args or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise ExprError("range() takes integers")
    r = range(*args)
    if len(r) > limit("MAX_EXPR_SIZE"):
        raise ExprError(f"range() longer than allowed {hint('MAX_EXPR_SIZE')}")
    return r


def _bounded_round(x: Any, *nd: Any) -> Any:
    if nd and not (isinstance(nd[0], int) and abs(nd[0]) <= MAX_ROUND_DIGITS):
        raise ExprError(f"round(): ndigits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(x, *nd)


def _numbers_sum(items: Any, *start: Any) -> Any:
    values = [*items, *start]
    if not all(isinstance(v, int | float) for v in values):
        raise ExprError("sum() adds numbers only")
    return sum(items, *start)


def _bounded_str(x: Any) -> str:
    _check_size(x, "str() result")
    return str(x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": int,
    "float": float,
    "bool": bool,
    "round": _bounded_round,
    "len": len,
    "range": _bounded_range,
    "sum": _numbers_sum,
    "str": _bounded_str,
    "sqrt": math.sqrt,
    "log": math.log,
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
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    ast.Name,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Subscript,
    ast.Slice,
    ast.Call,
    ast.ListComp,
    ast.comprehension,
    ast.Load,
    ast.Store,
    ast.And,
    ast.Or,
    *_BINOPS,
    *_UNARY,
    *_COMPARE,
)


@dataclass(frozen=True)
class Expr:
    """A parsed, checked expression. `names` are the free variables it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        return _Evaluator(env).visit(self.tree.body)


def _depth(tree: ast.AST) -> tuple[int, ast.AST]:
    """(depth of the deepest node, that node), without recursion."""
    deepest, where = 0, tree
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, d = stack.pop()
        if d > deepest:
            deepest, where = d, node
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest, where


def _offset(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0)


def parse_expr(source: str) -> Expr:
    """Parse and check an expression; raise `ExprError` for anything not allowed."""
    if len(source) > MAX_SOURCE:
        raise ExprError(f"expression longer than {MAX_SOURCE} characters")
    if "\0" in source:
        raise ExprError("expression contains a NUL character", source.index("\0"))
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"expression syntax error: {exc.msg}", _skip_spaces(source, (exc.offset or 1) - 1)) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError("expression nested too deeply to parse") from None
    depth, deepest = _depth(tree)
    if depth > limit("MAX_EXPR_DEPTH"):
        raise ExprError(
            f"expression nested {depth} levels deep {hint('MAX_EXPR_DEPTH')}; split it into config entries",
            _offset(deepest),
        )
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


def _is_int(v: Any) -> bool:
    return isinstance(v, int)


def _check_binop(op: ast.operator, left: Any, right: Any, node: ast.AST, bits: int, cap: int) -> None:
    """Refuse an operation whose result would exceed the budget (`bits`, size `cap`), before computing it."""
    if isinstance(op, ast.Pow) and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
        raise ExprError(f"exponent larger than {MAX_EXPONENT}", _offset(node))
    too_big = False
    if isinstance(op, ast.Pow) and _is_int(left) and _is_int(right) and right > 0:
        too_big = max(left.bit_length(), 1) * right > bits
    if isinstance(op, ast.Mult) and _is_int(left) and _is_int(right):
        too_big = left.bit_length() + right.bit_length() > bits
    if too_big:
        raise ExprError(f"integer result longer than {bits} bits {hint('MAX_INT_BITS')}", _offset(node))
    seqs = (str, list, tuple)
    if isinstance(op, ast.Mult) and (isinstance(left, seqs) or isinstance(right, seqs)):
        seq, n = (left, right) if isinstance(left, seqs) else (right, left)
        if _is_int(n) and n > 0 and _size(seq, cap) * n > cap:
            raise ExprError(f"sequence longer than allowed {hint('MAX_EXPR_SIZE')}", _offset(node))
    adding = isinstance(op, ast.Add) and isinstance(left, seqs) and isinstance(right, seqs)
    if adding and _size(left, cap) + _size(right, cap) > cap:
        raise ExprError(f"sequence longer than allowed {hint('MAX_EXPR_SIZE')}", _offset(node))
    if isinstance(op, ast.Mod) and isinstance(left, str):
        raise ExprError("string formatting with `%` is not allowed", _offset(node))


class _Evaluator:
    def __init__(self, env: Mapping[str, Any]) -> None:
        self.env = env
        self.local: dict[str, Any] = {}
        self.steps = limit("MAX_EXPR_STEPS")
        self.bits = limit("MAX_INT_BITS")
        self.cap = limit("MAX_EXPR_SIZE")

    def visit(self, node: ast.AST) -> Any:
        self.steps -= 1
        if self.steps < 0:
            raise ExprError(f"expression takes too many steps to evaluate {hint('MAX_EXPR_STEPS')}", _offset(node))
        try:
            return self._visit(node)
        except ExprError:
            raise
        except (ArithmeticError, TypeError, ValueError, IndexError, KeyError, MemoryError, RecursionError) as exc:
            raise ExprError(f"cannot evaluate `{ast.unparse(node)[:200]}`: {str(exc)[:200]}", _offset(node)) from None

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
            _check_binop(node.op, left, right, node, self.bits, self.cap)
            result = _BINOPS[type(node.op)](left, right)
            if _is_int(result) and result.bit_length() > self.bits:
                raise ExprError(f"integer result longer than {self.bits} bits {hint('MAX_INT_BITS')}", _offset(node))
            return result
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
            return _check_size([self.visit(e) for e in node.elts], "list")
        if isinstance(node, ast.Tuple):
            return _check_size(tuple(self.visit(e) for e in node.elts), "tuple")
        if isinstance(node, ast.Subscript):
            target = self.visit(node.value)
            if isinstance(node.slice, ast.Slice):
                bounds = (node.slice.lower, node.slice.upper, node.slice.step)
                parts = [self.visit(p) if p is not None else None for p in bounds]
                return target[slice(*parts)]
            return target[self.visit(node.slice)]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                raise ExprError("only the allowed functions can be called", _offset(node))
            try:
                return FUNCTIONS[node.func.id](*[self.visit(a) for a in node.args])
            except ExprError as exc:
                raise ExprError(exc.message, exc.offset or _offset(node)) from None
        if isinstance(node, ast.ListComp):
            gen = node.generators[0]
            if not isinstance(gen.target, ast.Name):
                raise ExprError("comprehension targets must be plain names", _offset(gen.target))
            iterable = self.visit(gen.iter)
            cap = self.cap
            if not isinstance(iterable, list | tuple | range | str):
                raise ExprError(f"cannot iterate over {type(iterable).__name__}", _offset(gen.iter))
            if len(iterable) > cap:
                raise ExprError(f"sequence longer than allowed {hint('MAX_EXPR_SIZE')}", _offset(node))
            out = []
            size = 0
            saved = self.local.get(gen.target.id)
            for item in iterable:
                self.local[gen.target.id] = item
                if all(self.visit(cond) for cond in gen.ifs):
                    value = self.visit(node.elt)
                    size += _size(value, cap) + 2
                    if size > cap:
                        raise ExprError(f"list comprehension result too large {hint('MAX_EXPR_SIZE')}", _offset(node))
                    out.append(value)
            if saved is None:
                self.local.pop(gen.target.id, None)
            else:
                self.local[gen.target.id] = saved
            return out
        raise ExprError(f"`{type(node).__name__}` is not allowed", _offset(node))
