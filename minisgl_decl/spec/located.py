"""An expression of the spec, parsed once, with where it stands in the spec file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import Location
from .expr import Expr, ExprError


def shifted(loc: Location, offset: int) -> Location:
    """`loc` moved `offset` characters to the right on its line."""
    return Location(loc.file, loc.line, loc.column + offset)


@dataclass(frozen=True)
class SpecExpr:
    """An expression of the spec, parsed once. `expr` is None only while the spec has
    problems (`compile_checked`); stages after a successful compile never see that."""

    source: str
    expr: Expr | None
    node: Location  # the YAML scalar (undefined names are reported here)
    text: Location  # its first character (inside quotes; parse and evaluation errors are offsets from it)

    @property
    def names(self) -> frozenset[str]:
        """The config names it reads (none when it did not parse)."""
        return self.expr.names if self.expr is not None else frozenset()

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        if self.expr is None:
            raise ExprError(f"`{self.source}` did not parse")  # unreachable after a clean compile
        return self.expr.evaluate(env)

    def inside(self, offset: int) -> Location:
        """Where character `offset` of the expression text is."""
        return shifted(self.text, offset)

    def __str__(self) -> str:
        return self.source


#: a literal (number, bool, string constant, list, None) or an expression
Value = Any


def evaluate(value: SpecExpr | Value, env: Mapping[str, Any]) -> Any:
    """An expression evaluated over `env`; a literal as it is."""
    return value.evaluate(env) if isinstance(value, SpecExpr) else value


def written(value: SpecExpr | Value) -> str:
    """An expression or literal as the spec writes it, quoted like `repr` (for messages)."""
    return repr(value.source if isinstance(value, SpecExpr) else value)
