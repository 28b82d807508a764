"""Resolve a spec's `config:` mapping against an HF config.json into plain values.

Lookups try a nested `text_config` first (multimodal wrappers), then the top level;
`a.b` reads nested keys. Defaults and `expr:` entries are restricted expressions over
other config names, evaluated in dependency order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import Problem, SpecError, UserError, show
from ..spec.expr import ExprError
from ..spec.ir import Computed, ConfigEntry, Constant, FromHF, RopeFrom, SpecIR
from ..spec.located import SpecExpr
from .rope import normalise_rope

_MISSING = object()


@dataclass(frozen=True)
class ResolvedConfig:
    """The internal config of one model: name -> value (ints, floats, lists, RopeConfig, ...)."""

    values: Mapping[str, Any]
    hf: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


def hf_lookup(hf: Mapping[str, Any], key: str) -> Any:
    """Value of `key` (dotted for nesting) in an HF config, `text_config` first; `_MISSING` if absent."""
    scopes = [hf["text_config"], hf] if isinstance(hf.get("text_config"), Mapping) else [hf]
    for scope in scopes:
        node: Any = scope
        for part in key.split("."):
            if isinstance(node, Mapping) and node.get(part) is not None:
                node = node[part]
            else:
                node = _MISSING
                break
        if node is not _MISSING:
            return node
    return _MISSING


def _first_present(hf: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return _first_present_key(hf, keys)[1]


def _first_present_key(hf: Mapping[str, Any], keys: tuple[str, ...] | list[str]) -> tuple[str | None, Any]:
    for key in keys:
        value = hf_lookup(hf, key)
        if value is not _MISSING:
            return key, value
    return None, _MISSING


def _finite(value: Any, key: str, kind: type) -> Any:
    """A rope number from the HF config: finite and of a plain numeric type, else a ValueError naming the key."""
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValueError(f"HF config `{key}` = {_got(value)}: expected a finite number")
    if kind is int and (not float(value).is_integer() or abs(value) > MAX_INT):
        raise ValueError(f"HF config `{key}` = {_got(value)}: expected an integer within ±2**40")
    return kind(value)


MAX_INT = 2**40  # every integer config value (sizes, counts, positions) stays within ±MAX_INT


def _got(value: Any) -> str:
    return show(repr(value), 80)


def _coerce(value: Any, kind: str) -> Any:
    """`value` as `kind`; integers must be finite, integral and within ±MAX_INT; floats finite."""
    if kind == "any" or value is None:
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected an integer, got {_got(value)}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise TypeError(f"expected an integer, got {_got(value)}")
        if not -MAX_INT <= value <= MAX_INT:
            raise TypeError(f"integer {_got(value)} is out of range (|value| <= 2**40)")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {_got(value)}")
        if isinstance(value, int) and abs(value) > 2**1000:
            raise TypeError(f"number {_got(value)} is out of range")
        if not math.isfinite(float(value)):
            raise TypeError(f"expected a finite number, got {_got(value)}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    expected = {"str": str, "list": list, "dict": dict}[kind]
    if not isinstance(value, expected):
        raise TypeError(f"expected a {kind}, got {_got(value)}")
    return value


def resolve_config(spec: SpecIR, hf: Mapping[str, Any]) -> ResolvedConfig:
    """Evaluate every config entry of `spec` against `hf`; report all problems at once."""
    entries = spec.config
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    pending = dict(entries)
    while pending:
        progressed = False
        for name, entry in list(pending.items()):
            deps = entry.reads & set(entries)
            if not deps <= set(values):
                continue
            del pending[name]
            progressed = True
            try:
                values[name] = _resolve_entry(entry, hf, values)
            except (ExprError, TypeError, ValueError, ArithmeticError) as exc:
                msg = exc.message if isinstance(exc, ExprError) else str(exc)
                problems.append(Problem(entry.at, f"config `{name}`: {msg}"))
                values[name] = None
            except SpecError as exc:
                problems.extend(exc.problems)
                values[name] = None
        if not progressed:
            for name in pending:
                problems.append(Problem(entry.at, f"config `{name}` depends on itself"))
            break
    if not problems:
        problems = _unmet_requirements(spec, values)
    if problems:
        raise SpecError(problems)
    return ResolvedConfig(values=MappingProxyType(values), hf=MappingProxyType(dict(hf)))


def _unmet_requirements(spec: SpecIR, values: dict[str, Any]) -> list[Problem]:
    """`requires:` expressions that are false for this config (the spec cannot serve it)."""
    problems = []
    for req in spec.requires:
        try:
            ok = bool(req.evaluate(values))
        except ExprError as exc:
            problems.append(Problem(req.node, f"requires: {exc.message}"))
            continue
        if not ok:
            seen = ", ".join(f"{n}={values.get(n)!r}" for n in sorted(req.names))
            problems.append(
                Problem(req.node, f"this checkpoint is not supported by the spec: `{req.source}` is false ({seen})")
            )
    return problems


def _plain(value: Any) -> Any:
    """Config values are JSON-like data: None, bool, int, finite float, str, and lists/mappings of them."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise TypeError(f"non-finite number {v!r}; config values must be finite")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            raise TypeError(f"integer {_got(v)} is out of range")
        if isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError("mapping keys must be strings")
            stack.extend(v.values())
        elif v is not None and not isinstance(v, bool | int | float | str):
            raise TypeError(
                f"a value of type `{type(v).__name__}` is not allowed here; use numbers, strings, "
                "booleans, lists or mappings"
            )
    return value


def _resolve_entry(entry: ConfigEntry, hf: Mapping[str, Any], values: dict[str, Any]) -> Any:
    if isinstance(entry.source, RopeFrom):
        return _resolve_rope(entry.source, hf)
    return _plain(_resolve_value(entry.source, hf, values))


def _resolve_value(entry: Any, hf: Mapping[str, Any], values: dict[str, Any]) -> Any:
    if isinstance(entry, Constant):
        return entry.value
    if isinstance(entry, Computed):
        return _coerce(entry.expr.evaluate(values), entry.type)
    if isinstance(entry, FromHF):
        keys = list(entry.keys)
        key, value = _first_present_key(hf, keys)
        if key is not None:
            try:
                return _coerce(value, entry.type)
            except TypeError as exc:
                raise TypeError(f"HF config `{show(key)}`: {exc}") from None
        if value is _MISSING:
            if isinstance(entry.default, SpecExpr):
                value = entry.default.evaluate(values)
            elif entry.default is None:
                raise ValueError(f"the HF config has none of {', '.join(keys)} and the spec gives no `default`")
            else:
                value = entry.default
        return _coerce(value, entry.type)
    raise TypeError(f"unknown config entry {entry!r}")


def _resolve_rope(src: RopeFrom, hf: Mapping[str, Any]) -> Any:
    params = _first_present(hf, src.parameters_from)
    theta = _first_present(hf, src.theta_from)
    if theta is _MISSING and isinstance(params, Mapping):
        theta = params.get("rope_theta", _MISSING)
    prf = _first_present(hf, src.partial_rotary_from)
    max_pos = _first_present(hf, src.max_position_from)
    orig = _first_present(hf, src.original_max_position_from)
    try:
        return normalise_rope(
            params if isinstance(params, Mapping) else None,
            theta=float(src.default_theta) if theta is _MISSING else _finite(theta, "rope_theta", float),
            layer_type=src.layer_type,
            partial_rotary_factor=_finite(prf, "partial_rotary_factor", float),
            max_position=_finite(max_pos, "max_position_embeddings", int),
            original_max_position=_finite(orig, "original_max_position_embeddings", int),
        )
    except UserError as exc:
        raise ValueError(str(exc)) from None
