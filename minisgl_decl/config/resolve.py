"""Resolve a spec's `config:` mapping against an HF config.json into plain values.

Lookups try a nested `text_config` first (multimodal wrappers), then the top level;
`a.b` reads nested keys. Defaults and `expr:` entries are restricted expressions over
other config names, evaluated in dependency order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import Problem, SpecError, UserError
from ..spec.expr import ExprError, parse_expr
from ..spec.loaded import LoadedSpec
from ..spec.schema import ExprField, FromField, RopeField, ValueField
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


def _first_present(hf: Mapping[str, Any], keys: list[str]) -> Any:
    for key in keys:
        value = hf_lookup(hf, key)
        if value is not _MISSING:
            return value
    return _MISSING


def _coerce(value: Any, kind: str) -> Any:
    if kind == "any" or value is None:
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    expected = {"str": str, "list": list, "dict": dict}[kind]
    if not isinstance(value, expected):
        raise TypeError(f"expected a {kind}, got {value!r}")
    return value


def config_dependencies(entry: Any) -> frozenset[str]:
    """Config names an entry's expressions read (parse errors are reported by spec checks)."""
    source = None
    if isinstance(entry, ExprField):
        source = entry.expr
    elif isinstance(entry, FromField) and isinstance(entry.default, str):
        source = entry.default
    if source is None:
        return frozenset()
    try:
        return parse_expr(source).names
    except ExprError:
        return frozenset()


def resolve_config(spec: LoadedSpec, hf: Mapping[str, Any]) -> ResolvedConfig:
    """Evaluate every config entry of `spec` against `hf`; report all problems at once."""
    entries = spec.spec.config
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    pending = dict(entries)
    while pending:
        progressed = False
        for name, entry in list(pending.items()):
            deps = config_dependencies(entry) & set(entries)
            if not deps <= set(values):
                continue
            del pending[name]
            progressed = True
            try:
                values[name] = _resolve_entry(name, entry, hf, values)
            except (ExprError, TypeError, ValueError) as exc:
                msg = exc.message if isinstance(exc, ExprError) else str(exc)
                problems.append(Problem(spec.where(("config", name)), f"config `{name}`: {msg}"))
                values[name] = None
            except SpecError as exc:
                problems.extend(exc.problems)
                values[name] = None
        if not progressed:
            for name in pending:
                problems.append(Problem(spec.where(("config", name)), f"config `{name}` depends on itself"))
            break
    if not problems:
        problems = _unmet_requirements(spec, values)
    if problems:
        raise SpecError(problems)
    return ResolvedConfig(values=MappingProxyType(values), hf=MappingProxyType(dict(hf)))


def _unmet_requirements(spec: LoadedSpec, values: dict[str, Any]) -> list[Problem]:
    """`requires:` expressions that are false for this config (the spec cannot serve it)."""
    problems = []
    for k, source in enumerate(spec.spec.requires):
        try:
            expr = parse_expr(source)
            ok = bool(expr.evaluate(values))
        except ExprError as exc:
            problems.append(Problem(spec.where(("requires", k)), f"requires: {exc.message}"))
            continue
        if not ok:
            seen = ", ".join(f"{n}={values.get(n)!r}" for n in sorted(expr.names))
            problems.append(Problem(spec.where(("requires", k)),
                                    f"this checkpoint is not supported by the spec: `{source}` is false ({seen})"))
    return problems


def _resolve_entry(name: str, entry: Any, hf: Mapping[str, Any], values: dict[str, Any]) -> Any:
    if isinstance(entry, ValueField):
        return entry.value
    if isinstance(entry, ExprField):
        return _coerce(parse_expr(entry.expr).evaluate(values), entry.type)
    if isinstance(entry, FromField):
        keys = [entry.from_] if isinstance(entry.from_, str) else list(entry.from_)
        value = _first_present(hf, keys)
        if value is _MISSING:
            if isinstance(entry.default, str):
                value = parse_expr(entry.default).evaluate(values)
            elif entry.default is None:
                raise ValueError(
                    f"the HF config has none of {', '.join(keys)} and the spec gives no `default`"
                )
            else:
                value = entry.default
        return _coerce(value, entry.type)
    if isinstance(entry, RopeField):
        src = entry.rope
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
                theta=float(src.default_theta if theta is _MISSING else theta),
                layer_type=src.layer_type,
                partial_rotary_factor=None if prf is _MISSING else float(prf),
                max_position=None if max_pos is _MISSING else int(max_pos),
                original_max_position=None if orig is _MISSING else int(orig),
                where=f"config `{name}`",
            )
        except UserError as exc:
            raise ValueError(str(exc)) from None
    raise TypeError(f"unknown config entry {entry!r}")
