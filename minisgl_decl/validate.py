"""Whole-spec validation: structure, cross-references, and a build against the example config.

Collects every problem (each with file:line:column) instead of stopping at the first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .catalogue import catalogue_names, get_layer
from .config.resolve import config_dependencies, resolve_config
from .errors import Problem, SpecError, UserError, closest
from .graph.build import BODY_VAR, FORWARD_INPUT, STACK, ModelGraph, build_graph
from .graph.dataflow import Scope, parse_statements
from .graph.kv_rules import kv_modules, kv_reuse
from .plan.build import rule_for
from .plan.rules import EXPERT, INDEX, WeightRule, normalise_rules
from .spec.expr import ExprError, parse_expr
from .spec.load import load_spec
from .spec.loaded import LoadedSpec
from .spec.schema import MODULE_IF, ExprField, FromField, Spec
from .spec.yaml_source import PathKey


def _expr_problems(spec: LoadedSpec, source: str, path: PathKey, names: set[str], what: str) -> list[Problem]:
    try:
        expr = parse_expr(source)
    except ExprError as exc:
        return [Problem(spec.source_map.locate_in_scalar(path, exc.offset), f"{what}: {exc.message}")]
    bad = sorted(expr.names - names)
    return [Problem(spec.where(path), f"{what}: undefined config name `{n}`; {closest(n, names - {'i'})}") for n in bad]


def _check_config(spec: LoadedSpec) -> list[Problem]:
    problems: list[Problem] = []
    names = set(spec.spec.config)
    for name, entry in spec.spec.config.items():
        if isinstance(entry, ExprField):
            problems += _expr_problems(spec, entry.expr, ("config", name, "expr"), names, f"config `{name}`")
        elif isinstance(entry, FromField) and isinstance(entry.default, str):
            problems += _expr_problems(spec, entry.default, ("config", name, "default"), names, f"config `{name}`")
    # cycles
    deps = {n: config_dependencies(e) & names for n, e in spec.spec.config.items()}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(deps[n]):
            if state.get(d) == 1:
                cycle = " -> ".join([*stack[stack.index(d) :], d]) if d in stack else f"{n} -> {d}"
                problems.append(Problem(spec.where(("config", n)), f"config names depend on each other: {cycle}"))
            elif d not in state:
                visit(d, [*stack, d])
        state[n] = 2

    for n in deps:
        if n not in state:
            visit(n, [n])
    return problems


def _check_modules(spec: LoadedSpec, modules: dict[str, Any], where: PathKey, names: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    for mod_name, full_decl in modules.items():
        path = (*where, mod_name)
        condition = full_decl.get(MODULE_IF)
        if isinstance(condition, str):
            problems += _expr_problems(spec, condition, (*path, MODULE_IF), names, f"`{mod_name}.if`")
        decl = {k: v for k, v in full_decl.items() if k != MODULE_IF}
        if len(decl) != 1:
            problems.append(
                Problem(
                    spec.where(path),
                    f"module `{mod_name}` must name exactly one catalogue layer "
                    f"(found {len(decl)}: {', '.join(decl) or 'none'})",
                )
            )
            continue
        ((layer_name, raw),) = decl.items()
        try:
            kind = get_layer(layer_name)
        except KeyError:
            problems.append(
                Problem(
                    spec.where((*path, layer_name), key=True),
                    f"unknown layer `{layer_name}`; {closest(layer_name, catalogue_names())}",
                )
            )
            continue
        fields = kind.Args.model_fields
        raw = raw or {}
        for arg, value in raw.items():
            if arg not in fields:
                problems.append(
                    Problem(
                        spec.where((*path, layer_name, arg), key=True),
                        f"`{layer_name}` has no argument `{arg}`; {closest(arg, fields)}",
                    )
                )
            elif isinstance(value, str):
                problems += _expr_problems(spec, value, (*path, layer_name, arg), names, f"`{mod_name}.{arg}`")
        for arg, f in fields.items():
            if f.is_required() and arg not in raw:
                problems.append(Problem(spec.where((*path, layer_name)), f"`{layer_name}` needs argument `{arg}`"))
    return problems


def _check_dataflow(spec: LoadedSpec, lines: list[str], scope: Scope, where: PathKey) -> list[Problem]:
    return [
        Problem(spec.source_map.locate_in_scalar((*where, i), s.offset), s.message)
        for i, s in enumerate(parse_statements(lines, scope))
        if isinstance(s, ExprError)
    ]


def _check_weights(spec: LoadedSpec) -> list[Problem]:
    """Rule shape checks that need no arguments (targets are checked against the example build)."""
    problems: list[Problem] = []
    for rule in normalise_rules(spec):
        loc = spec.where(rule.spec_path, key=True)
        if not rule.sources:
            problems.append(Problem(loc, f"weight rule `{rule.target}` needs `from` or `concat`"))
        indexed = INDEX in rule.target
        for s in (*rule.sources, *([rule.tied_to] if rule.tied_to else [])):
            if (INDEX in s.key) != indexed:
                problems.append(
                    Problem(loc, f"source `{s.key}` and target `{rule.target}` must both use `{INDEX}` or neither")
                )
            if EXPERT in s.key and rule.experts is None:
                problems.append(
                    Problem(
                        loc,
                        f"source `{s.key}`: `{EXPERT}` (expert index) goes with `experts:` "
                        "(how many experts to stack); in an `experts:` rule, a source without "
                        f"`{EXPERT}` is one tensor stacking every expert along dim 0",
                    )
                )
        if isinstance(rule.experts, str):
            problems += _expr_problems(
                spec, rule.experts, (*rule.spec_path, "experts"), set(spec.spec.config), "experts"
            )
        if isinstance(rule.tied_if, str):
            problems += _expr_problems(
                spec, rule.tied_if, (*rule.spec_path, "tied_if"), set(spec.spec.config), "tied_if"
            )
        if (rule.tied_to is None) != (rule.tied_if is None):
            problems.append(Problem(loc, "`tied_to` and `tied_if` go together"))
    return problems


def check_loaded(spec: LoadedSpec) -> list[Problem]:
    """Every problem of a structurally valid spec (empty list: valid)."""
    s: Spec = spec.spec
    names = set(s.config)
    problems = _check_config(spec)
    problems += _check_modules(spec, s.model.modules, ("model", "modules"), names)
    problems += _check_modules(spec, s.model.layers.modules, ("model", "layers", "modules"), names | {"i"})
    if isinstance(s.model.layers.repeat, str):
        problems += _expr_problems(spec, s.model.layers.repeat, ("model", "layers", "repeat"), names, "repeat")
    overlap = (set(s.model.modules) | set(s.model.layers.modules)) & names
    for n in sorted(overlap):
        problems.append(Problem(spec.where(("config", n), key=True), f"`{n}` is both a config name and a module"))
    problems += _check_dataflow(
        spec,
        s.model.layers.body,
        Scope(frozenset(s.model.layers.modules), frozenset(names | {"i"}), (BODY_VAR,)),
        ("model", "layers", "body"),
    )
    problems += _check_dataflow(
        spec,
        s.model.forward,
        Scope(frozenset(s.model.modules), frozenset(names), (FORWARD_INPUT,), frozenset({STACK})),
        ("model", "forward"),
    )
    problems += kv_reuse(
        spec,
        s.model.layers.body,
        Scope(frozenset(s.model.layers.modules), frozenset(names | {"i"}), (BODY_VAR,)),
        ("model", "layers", "body"),
        kv_modules(s.model.layers.modules),
    )
    problems += kv_reuse(
        spec,
        s.model.forward,
        Scope(frozenset(s.model.modules), frozenset(names), (FORWARD_INPUT,), frozenset({STACK})),
        ("model", "forward"),
        {STACK} | kv_modules(s.model.modules),
    )
    problems += _check_weights(spec)
    for k, source in enumerate(s.requires):
        problems += _expr_problems(spec, source, ("requires", k), names, "requires")
    if problems or not s.example_config:
        return problems
    return _check_example_build(spec)


def _check_example_build(spec: LoadedSpec) -> list[Problem]:
    """Resolve against `example_config`, build the graph, and require a rule for every parameter."""
    try:
        graph = build_graph(spec, resolve_config(spec, spec.spec.example_config))
    except SpecError as exc:
        return exc.problems
    except (UserError, ValidationError) as exc:
        return [Problem(spec.where(("example_config",)), str(exc))]
    rules = normalise_rules(spec)
    problems = _rule_targets(spec, graph, rules)
    if problems:
        return problems
    for name, decl, module in graph.parameters:
        if rule_for(name, rules) is None:
            problems.append(
                Problem(
                    spec.where(module.spec_path),
                    f"parameter `{name}` ({decl.role_name}) has no weight rule under weights.params",
                )
            )
    return problems


def _rule_targets(spec: LoadedSpec, graph: ModelGraph, rules: list[WeightRule]) -> list[Problem]:
    """Every rule names a parameter some layer declares (present or switched off by its arguments)."""
    stack_path = re.compile(rf"^{STACK}\.\d+\.")
    by_module: dict[str, list[str]] = {}
    for m in graph.modules:
        key = stack_path.sub(f"{STACK}.{INDEX}.", m.path)
        by_module.setdefault(key, []).extend(f"{key}.{p.name}" for p in m.declared)
    possible = {n for names in by_module.values() for n in names}
    problems = []
    for rule in rules:
        if rule.target in possible:
            continue
        owner = next((m for m in sorted(by_module, key=len, reverse=True) if rule.target.startswith(m + ".")), None)
        options = by_module[owner] if owner else sorted(possible)
        where = f" of `{owner}`" if owner else ""
        problems.append(
            Problem(
                spec.where(rule.spec_path, key=True),
                f"weight rule `{rule.target}` produces no parameter; parameters{where}: "
                f"{closest(rule.target, options)}",
            )
        )
    return problems


def validate_file(path: str | Path) -> list[Problem]:
    try:
        loaded = load_spec(path)
    except SpecError as exc:
        return exc.problems
    return check_loaded(loaded)


def load_valid_spec(path: str | Path) -> LoadedSpec:
    """Load and fully validate a spec; raise `SpecError` with every problem."""
    loaded = load_spec(path)
    problems = check_loaded(loaded)
    if problems:
        raise SpecError(problems)
    return loaded
