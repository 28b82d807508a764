"""Whole-spec validation: structure, cross-references, and a build against the example config.

Collects every problem (each with file:line:column) instead of stopping at the first.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from .catalogue import catalogue_names, get_layer
from .config.resolve import resolve_config
from .errors import Problem, SpecError, UserError, closest
from .graph.build import ModelGraph, build_graph
from .graph.kv_rules import kv_modules, kv_reuse
from .spec.compile import compile_checked
from .spec.dataflow import STACK
from .spec.ir import ModuleDecl, SpecIR
from .spec.load import load_spec
from .spec.loaded import LoadedSpec
from .spec.located import SpecExpr
from .spec.rules import EXPERT, INDEX, WeightRule, rule_for


def _names(expr: SpecExpr | object, names: set[str], what: str) -> list[Problem]:
    """A problem for each name the expression reads that is not in `names` (parse errors are the compiler's)."""
    if not isinstance(expr, SpecExpr):
        return []
    bad = sorted(expr.names - names)
    return [Problem(expr.node, f"{what}: undefined config name `{n}`; {closest(n, names - {'i'})}") for n in bad]


def _check_config(spec: SpecIR) -> list[Problem]:
    problems: list[Problem] = []
    names = set(spec.config)
    for name, entry in spec.config.items():
        problems += _names(entry.expression, names, f"config `{name}`")
    # cycles
    deps = {n: e.reads & names for n, e in spec.config.items()}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(deps[n]):
            if state.get(d) == 1:
                cycle = " -> ".join([*stack[stack.index(d) :], d]) if d in stack else f"{n} -> {d}"
                problems.append(Problem(spec.config[n].at, f"config names depend on each other: {cycle}"))
            elif d not in state:
                visit(d, [*stack, d])
        state[n] = 2

    for n in deps:
        if n not in state:
            visit(n, [n])
    return problems


def _check_modules(modules: tuple[ModuleDecl, ...], names: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    for m in modules:
        problems += _names(m.condition, names, f"`{m.name}.if`")
        try:
            kind = get_layer(m.layer)
        except KeyError:
            hint = closest(m.layer, catalogue_names())
            problems.append(Problem(m.layer_key_at, f"unknown layer `{m.layer}`; {hint}"))
            continue
        fields = kind.Args.model_fields
        for arg in m.args:
            if arg.name not in fields:
                problems.append(
                    Problem(arg.key_at, f"`{m.layer}` has no argument `{arg.name}`; {closest(arg.name, fields)}")
                )
            else:
                problems += _names(arg.value, names, f"`{m.name}.{arg.name}`")
        given = {a.name for a in m.args}
        for arg, f in fields.items():
            if f.is_required() and arg not in given:
                problems.append(Problem(m.layer_at, f"`{m.layer}` needs argument `{arg}`"))
    return problems


def _check_weights(spec: SpecIR) -> list[Problem]:
    """Rule shape checks that need no arguments (targets are checked against the example build)."""
    problems: list[Problem] = []
    names = set(spec.config)
    for rule in spec.weights.rules:
        loc = rule.at
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
        problems += _names(rule.experts, names, "experts")
        problems += _names(rule.tied_if, names, "tied_if")
        if (rule.tied_to is None) != (rule.tied_if is None):
            problems.append(Problem(loc, "`tied_to` and `tied_if` go together"))
    return problems


def check_ir(spec: SpecIR) -> list[Problem]:
    """Every problem of a compiled spec that the compiler could not know (names, the catalogue, ...)."""
    names = set(spec.config)
    problems = _check_config(spec)
    problems += _check_modules(spec.modules, names)
    problems += _check_modules(spec.layers.modules, names | {"i"})
    problems += _names(spec.layers.repeat, names, "repeat")
    overlap = (spec.module_names() | spec.layer_module_names()) & names
    for n in sorted(overlap):
        problems.append(Problem(spec.config[n].key_at, f"`{n}` is both a config name and a module"))
    problems += kv_reuse(spec.layers.body, kv_modules(spec.layers.modules))
    problems += kv_reuse(spec.forward, {STACK} | kv_modules(spec.modules))
    problems += _check_weights(spec)
    for req in spec.requires:
        problems += _names(req, names, "requires")
    return problems


def _validated(spec: LoadedSpec) -> tuple[SpecIR, list[Problem]]:
    ir, problems = compile_checked(spec)
    problems += check_ir(ir)
    if problems or not ir.example_config:
        return ir, problems
    return ir, _check_example_build(ir)


def check_loaded(spec: LoadedSpec) -> list[Problem]:
    """Every problem of a structurally valid spec (empty list: valid)."""
    return _validated(spec)[1]


def _check_example_build(spec: SpecIR) -> list[Problem]:
    """Resolve against `example_config`, build the graph, and require a rule for every parameter."""
    try:
        graph = build_graph(spec, resolve_config(spec, spec.example_config))
    except SpecError as exc:
        return exc.problems
    except (UserError, ValidationError) as exc:
        return [Problem(spec.example_at, str(exc))]
    rules = spec.weights.rules
    problems = _rule_targets(graph, rules)
    if problems:
        return problems
    for name, decl, module in graph.parameters:
        if rule_for(name, rules) is None:
            problems.append(
                Problem(
                    module.at,
                    f"parameter `{name}` ({decl.role_name}) has no weight rule under weights.params",
                )
            )
    return problems


def _rule_targets(graph: ModelGraph, rules: tuple[WeightRule, ...]) -> list[Problem]:
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
                rule.at,
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


def load_valid_spec(path: str | Path) -> SpecIR:
    """Load, compile and fully validate a spec; raise `SpecError` with every problem."""
    ir, problems = _validated(load_spec(path))
    if problems:
        raise SpecError(problems)
    return ir
