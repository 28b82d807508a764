"""The typed form of a spec: what every stage after `spec/` reads (never the pydantic `Spec`).

`spec/compile.py` builds it once from a validated document: every expression parsed
(`SpecExpr`), every dataflow statement parsed (`spec/dataflow.py`), every weight rule
normalised (`spec/rules.py`), every module declaration split into its layer and
arguments. Each node carries the `Location`s its problems are reported at, so a later
stage reports at the spec's file:line:col without the YAML source map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import Location
from .dataflow import Stmt
from .located import SpecExpr, Value, shifted
from .rules import WeightRule

# ---- config: internal name <- HF config.json -------------------------------------------------


@dataclass(frozen=True)
class FromHF:
    """The first of `keys` present in the HF config (text_config first), else `default`."""

    keys: tuple[str, ...]
    default: SpecExpr | Value  # None: no default (the key is required)
    type: str  # int | float | bool | str | list | dict | any


@dataclass(frozen=True)
class Computed:
    """An expression over other config names."""

    expr: SpecExpr
    type: str


@dataclass(frozen=True)
class Constant:
    value: Any


@dataclass(frozen=True)
class RopeFrom:
    """HF rotary settings (4.x `rope_theta`/`rope_scaling`, 5.x `rope_parameters`) to normalise."""

    parameters_from: tuple[str, ...]
    theta_from: tuple[str, ...]
    default_theta: float
    layer_type: str | None
    partial_rotary_from: tuple[str, ...]
    max_position_from: tuple[str, ...]
    original_max_position_from: tuple[str, ...]


ConfigSource = FromHF | Computed | Constant | RopeFrom


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    source: ConfigSource
    at: Location  # the entry's value (resolution problems)
    key_at: Location  # its key

    @property
    def expression(self) -> SpecExpr | None:
        """The expression this entry evaluates, if any (`expr:`, or a `default:` that is one)."""
        if isinstance(self.source, Computed):
            return self.source.expr
        if isinstance(self.source, FromHF) and isinstance(self.source.default, SpecExpr):
            return self.source.default
        return None

    @property
    def reads(self) -> frozenset[str]:
        """Config names its expression reads (possibly names that do not exist: validation says so)."""
        e = self.expression
        return e.names if e is not None else frozenset()


# ---- modules and dataflow ----------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument of a module declaration: a literal, or an expression over config names."""

    name: str
    value: SpecExpr | Value
    at: Location
    key_at: Location


@dataclass(frozen=True)
class ModuleDecl:
    """`name: {layer: {arg: value, ...}}`, optionally with `if: <condition>`."""

    name: str
    layer: str
    args: tuple[Arg, ...]
    condition: SpecExpr | bool | None  # None: always present
    at: Location  # the declaration
    if_at: Location  # its `if:` (the declaration when it has none)
    layer_at: Location  # the layer's argument mapping
    layer_key_at: Location  # the layer name

    def arg_at(self, name: str) -> Location:
        """Where argument `name` is given (the layer's mapping when it is not)."""
        return next((a.at for a in self.args if a.name == name), self.layer_at)


@dataclass(frozen=True)
class Statements:
    """A dataflow statement list (`forward:` or `layers.body:`), parsed."""

    stmts: tuple[Stmt, ...]  # the ones that parsed (all of them after a clean compile)
    at: Location  # the list itself
    texts: tuple[Location, ...]  # the first character of each line's text

    def inside(self, index: int, offset: int) -> Location:
        """Where character `offset` of statement line `index` is."""
        return shifted(self.texts[index], offset)


@dataclass(frozen=True)
class LayerStack:
    repeat: SpecExpr | int
    repeat_at: Location
    modules: tuple[ModuleDecl, ...]
    body: Statements


# ---- weights -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    rules: tuple[WeightRule, ...]  # in the spec's order: the first rule matching a parameter applies
    ignore: tuple[re.Pattern[str], ...]  # checkpoint tensors read by nothing
    ignore_patterns: tuple[str, ...]  # the same as written (`{i}` and `*`)
    at: Location  # `weights:`
    params_at: Location  # `weights.params:`


# ---- the spec ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecIR:
    """One compiled spec: the typed form every stage after `spec/` reads."""

    name: str
    file: str
    description: str
    architectures: tuple[str, ...]  # serves.architectures
    model_types: tuple[str, ...]  # serves.model_types
    serves_at: Location
    config: Mapping[str, ConfigEntry]  # in the spec's order
    modules: tuple[ModuleDecl, ...]  # top level (embedding, final norm, head, ...)
    layers: LayerStack
    forward: Statements
    weights: Weights
    requires: tuple[SpecExpr, ...]
    example_config: Mapping[str, Any]
    example_at: Location
    transformers_min: str | None = None  # serves.transformers_min: check's reference needs this release

    def module_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.modules)

    def layer_module_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.layers.modules)
