"""Compile a validated spec document once into its typed form (`spec/ir.py`).

Every expression is parsed here and only here (`parse_expr`), every dataflow statement
too, and every weight rule is normalised; a problem found on the way (an expression that
does not parse, a module naming no layer or two) is collected with its file:line:col.
Whether names exist in the catalogue or the config is `validate.py`'s job, on the result.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import Problem, SpecError
from .dataflow import BODY_VAR, FORWARD_INPUT, LAYER_INDEX, STACK, Scope, Stmt, parse_statements
from .expr import ExprError, parse_expr
from .ir import (
    Arg,
    Computed,
    ConfigEntry,
    ConfigSource,
    Constant,
    FromHF,
    LayerStack,
    ModuleDecl,
    RopeFrom,
    SpecIR,
    Statements,
    Weights,
)
from .load import load_spec, load_spec_text
from .loaded import LoadedSpec
from .located import SpecExpr
from .rules import Layout, SourceRef, WeightRule, ignore_regex
from .schema import MODULE_IF, ExprField, FromField, RopeField, RuleSpec, SourceSpec, ValueField
from .yaml_source import PathKey


class _Compiler:
    def __init__(self, loaded: LoadedSpec) -> None:
        self.loaded = loaded
        self.where = loaded.where
        self.problems: list[Problem] = []

    def expr(self, source: str, path: PathKey, what: str) -> SpecExpr:
        """`source` parsed; a parse problem is recorded (prefixed with `what`) and `expr` left None."""
        sm = self.loaded.source_map
        text = sm.locate_in_scalar(path, 0)
        try:
            parsed = parse_expr(source)
        except ExprError as exc:
            self.problems.append(Problem(sm.locate_in_scalar(path, exc.offset), f"{what}: {exc.message}"))
            parsed = None
        return SpecExpr(source, parsed, self.where(path), text)

    def value(self, value: Any, path: PathKey, what: str) -> Any:
        """A string is an expression; anything else a literal."""
        return self.expr(value, path, what) if isinstance(value, str) else value

    def config(self, name: str, entry: Any) -> ConfigEntry:
        path: PathKey = ("config", name)
        what = f"config `{name}`"
        source: ConfigSource
        if isinstance(entry, ExprField):
            source = Computed(self.expr(entry.expr, (*path, "expr"), what), entry.type)
        elif isinstance(entry, FromField):
            keys = (entry.from_,) if isinstance(entry.from_, str) else tuple(entry.from_)
            source = FromHF(keys, self.value(entry.default, (*path, "default"), what), entry.type)
        elif isinstance(entry, ValueField):
            source = Constant(entry.value)
        elif isinstance(entry, RopeField):
            r = entry.rope
            source = RopeFrom(
                tuple(r.parameters_from),
                tuple(r.theta_from),
                r.default_theta,
                r.layer_type,
                tuple(r.partial_rotary_from),
                tuple(r.max_position_from),
                tuple(r.original_max_position_from),
            )
        else:  # the schema admits nothing else
            raise TypeError(f"unknown config entry {entry!r}")
        return ConfigEntry(name, source, self.where(path), self.where(path, key=True))

    def modules(self, modules: dict[str, Any], where: PathKey) -> tuple[ModuleDecl, ...]:
        out = []
        for name, full in modules.items():
            path = (*where, name)
            condition = full.get(MODULE_IF)
            if isinstance(condition, str):
                condition = self.expr(condition, (*path, MODULE_IF), f"`{name}.if`")
            decl = {k: v for k, v in full.items() if k != MODULE_IF}
            if len(decl) != 1:
                self.problems.append(
                    Problem(
                        self.where(path),
                        f"module `{name}` must name exactly one catalogue layer "
                        f"(found {len(decl)}: {', '.join(decl) or 'none'})",
                    )
                )
                continue
            ((layer, raw),) = decl.items()
            at = (*path, layer)
            args = tuple(
                Arg(
                    arg,
                    self.value(v, (*at, arg), f"`{name}.{arg}`"),
                    self.where((*at, arg)),
                    self.where((*at, arg), key=True),
                )
                for arg, v in (raw or {}).items()
            )
            out.append(
                ModuleDecl(
                    name,
                    layer,
                    args,
                    condition,
                    self.where(path),
                    self.where((*path, MODULE_IF)),
                    self.where(at),
                    self.where(at, key=True),
                )
            )
        return tuple(out)

    def statements(self, lines: list[str], scope: Scope, where: PathKey) -> Statements:
        sm = self.loaded.source_map
        stmts: list[Stmt] = []
        for i, s in enumerate(parse_statements(lines, scope, parse_expr)):
            if isinstance(s, ExprError):
                self.problems.append(Problem(sm.locate_in_scalar((*where, i), s.offset), s.message))
            else:
                stmts.append(s)
        texts = tuple(sm.locate_in_scalar((*where, i), 0) for i in range(len(lines)))
        return Statements(tuple(stmts), self.where(where), texts)

    def source(self, s: str | SourceSpec, path: PathKey) -> SourceRef:
        if isinstance(s, str):
            return SourceRef(s)
        layout = None
        if s.layout is not None:
            split = tuple(
                self.value(v, (*path, "layout", "split", j), "layout split") for j, v in enumerate(s.layout.split)
            )
            layout = Layout(split, tuple(s.layout.order))
        return SourceRef(s.key, s.transpose, layout)

    def rule(self, target: str, raw: Any) -> WeightRule:
        path: PathKey = ("weights", "params", target)
        at = self.where(path, key=True)
        if isinstance(raw, str):
            return WeightRule(target, (SourceRef(raw),), 0, None, None, None, at)
        if isinstance(raw, list):
            sources = tuple(self.source(s, (*path, k)) for k, s in enumerate(raw))
            return WeightRule(target, sources, 0, None, None, None, at)
        if not isinstance(raw, RuleSpec):  # the schema admits nothing else
            raise TypeError(f"unknown weight rule {raw!r}")
        if raw.concat is not None:
            sources = tuple(self.source(s, (*path, "concat", k)) for k, s in enumerate(raw.concat))
        elif raw.from_ is not None:
            sources = (self.source(raw.from_, (*path, "from")),)
        else:
            sources = ()
        tied = self.source(raw.tied_to, (*path, "tied_to")) if raw.tied_to is not None else None
        tied_if = self.value(raw.tied_if, (*path, "tied_if"), "tied_if")
        experts = self.value(raw.experts, (*path, "experts"), "experts")
        return WeightRule(target, sources, raw.dim, raw.add, tied, tied_if, at, experts)

    def compile(self) -> SpecIR:
        s = self.loaded.spec
        names = frozenset(s.config)
        config = {name: self.config(name, entry) for name, entry in s.config.items()}
        top = self.modules(s.model.modules, ("model", "modules"))
        stack = self.modules(s.model.layers.modules, ("model", "layers", "modules"))
        repeat = s.model.layers.repeat
        layers = LayerStack(
            self.value(repeat, ("model", "layers", "repeat"), "repeat"),
            self.where(("model", "layers", "repeat")),
            stack,
            self.statements(
                s.model.layers.body,
                Scope(frozenset(s.model.layers.modules), names | {LAYER_INDEX}, (BODY_VAR,)),
                ("model", "layers", "body"),
            ),
        )
        forward = self.statements(
            s.model.forward,
            Scope(frozenset(s.model.modules), names, (FORWARD_INPUT,), frozenset({STACK})),
            ("model", "forward"),
        )
        weights = Weights(
            tuple(self.rule(target, raw) for target, raw in s.weights.params.items()),
            tuple(ignore_regex(p) for p in s.weights.ignore),
            tuple(s.weights.ignore),
            self.where(("weights",), key=True),
            self.where(("weights", "params"), key=True),
        )
        requires = tuple(self.expr(src, ("requires", k), "requires") for k, src in enumerate(s.requires))
        return SpecIR(
            name=s.name,
            file=self.loaded.file,
            description=s.description,
            architectures=tuple(s.serves.architectures),
            model_types=tuple(s.serves.model_types),
            serves_at=self.where(("serves",), key=True),
            config=MappingProxyType(config),
            modules=top,
            layers=layers,
            forward=forward,
            weights=weights,
            requires=requires,
            example_config=MappingProxyType(s.example_config),
            example_at=self.where(("example_config",)),
            transformers_min=s.serves.transformers_min,
        )


def compile_checked(loaded: LoadedSpec) -> tuple[SpecIR, list[Problem]]:
    """The typed form and the problems found making it (then some expressions are unparsed)."""
    c = _Compiler(loaded)
    ir = c.compile()
    return ir, c.problems


def compile_loaded(loaded: LoadedSpec) -> SpecIR:
    """The typed form of a loaded spec; `SpecError` with every problem found making it."""
    ir, problems = compile_checked(loaded)
    if problems:
        raise SpecError(problems)
    return ir


def load_ir(path: str | Path) -> SpecIR:
    """`load_spec` then `compile_loaded` (catalogue checks are `validate.load_valid_spec`'s)."""
    return compile_loaded(load_spec(path))


def load_ir_text(text: str, file: str = "<spec>") -> SpecIR:
    return compile_loaded(load_spec_text(text, file))
