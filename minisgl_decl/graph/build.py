"""Build the module graph of a spec for one resolved config and TP size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

from pydantic import ValidationError

from ..catalogue import LayerKind, get_layer
from ..catalogue.params import ParamDecl
from ..catalogue.registry import LayerArgs
from ..config.resolve import ResolvedConfig
from ..errors import Problem, SpecError, UserError
from ..spec.expr import ExprError, parse_expr
from ..spec.loaded import LoadedSpec
from ..spec.schema import MODULE_IF, split_module_decl
from ..spec.yaml_source import PathKey
from .dataflow import Scope, Stmt, parse_statements
from .program import Block, EmitError, LayerOps, Op, ProgramBuilder, fuse_residual_norms, rename_outputs, unroll

FORWARD_INPUT = "tokens"
FORWARD_OUTPUT = "logits"
BODY_VAR = "x"
STACK = "layers"
LAYER_INDEX = "i"
MAX_LAYERS = 4096


@dataclass(frozen=True)
class ModuleNode:
    path: str
    layer: str
    args: LayerArgs
    declared: tuple[ParamDecl, ...]  # every parameter the layer can have (some may be absent)
    cache_index: int | None
    spec_path: PathKey

    @property
    def params(self) -> tuple[ParamDecl, ...]:
        """The parameters this instance has (its arguments switch the others off)."""
        return tuple(p for p in self.declared if p.present)

    def args_json(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in dict(self.args).items()}


@dataclass(frozen=True)
class ModelGraph:
    spec_name: str
    config: ResolvedConfig
    tp: int
    num_layers: int
    modules: tuple[ModuleNode, ...]
    forward: tuple[Op, ...]  # `forward:` with one `layers` op standing for the loop over `block`
    block: Block  # `layers.body` over local module names, for each layer
    program: tuple[Op, ...]  # both unrolled into one straight line and fused (for people and tools)

    def module(self, path: str) -> ModuleNode:
        for m in self.modules:
            if m.path == path:
                return m
        raise KeyError(path)

    @property
    def parameters(self) -> list[tuple[str, ParamDecl, ModuleNode]]:
        return [(f"{m.path}.{p.name}", p, m) for m in self.modules for p in m.params]

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec_name,
            "tp": self.tp,
            "config": {k: _jsonable(v) for k, v in self.config.values.items()},
            "num_layers": self.num_layers,
            "modules": [
                {
                    "path": m.path,
                    "layer": m.layer,
                    "args": m.args_json(),
                    "cache_index": m.cache_index,
                    "params": [
                        {
                            "name": p.name,
                            "shape": list(p.shape),
                            "local_shape": list(p.local_shape(self.tp)),
                            "role": p.role_name,
                        }
                        for p in m.params
                    ],
                }
                for m in self.modules
            ],
            "program": [op.to_json() for op in self.program],
        }


def _jsonable(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return asdict(v)
    return v


def _resolve_args(
    spec: LoadedSpec, kind: LayerKind, raw: dict[str, Any] | None, env: dict[str, Any], where: PathKey
) -> LayerArgs:
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, value in (raw or {}).items():
        try:
            values[name] = parse_expr(value).evaluate(env) if isinstance(value, str) else value
        except ExprError as exc:
            problems.append(Problem(spec.source_map.locate_in_scalar((*where, name), exc.offset), exc.message))
    if problems:
        raise SpecError(problems)
    try:
        return kind.Args(**values)
    except ValidationError as exc:
        for err in exc.errors():
            loc = (*where, *err["loc"][:1]) if err["loc"] else where
            arg = err["loc"][0] if err["loc"] else ""
            problems.append(
                Problem(spec.where(loc), f"`{kind.name}` argument `{arg}` = {err.get('input')!r}: {err['msg']}")
            )
        raise SpecError(problems) from None


def _module_nodes(
    spec: LoadedSpec, modules: dict[str, Any], prefix: str, env: dict[str, Any], where: PathKey, tp: int
) -> list[ModuleNode]:
    nodes = []
    for name, decl in modules.items():
        condition, layer_name, raw = split_module_decl(decl)  # shape checked by spec checks
        if not _holds(spec, condition, env, (*where, name, MODULE_IF)):
            continue  # `if:` is false here: the module does not exist (no parameters, no call)
        kind = get_layer(layer_name)
        args = _resolve_args(spec, kind, raw, env, (*where, name, layer_name))
        try:
            declared = tuple(kind.params(args))
            for p in declared:
                if p.present:
                    p.check_tp(tp, f"{prefix}{name}")
        except UserError as exc:
            raise SpecError([Problem(spec.where((*where, name)), str(exc))]) from None
        nodes.append(ModuleNode(f"{prefix}{name}", layer_name, args, declared, None, (*where, name)))
    return nodes


def _holds(spec: LoadedSpec, condition: str | bool | None, env: dict[str, Any], where: PathKey) -> bool:
    if condition is None or isinstance(condition, bool):
        return condition is not False
    try:
        return bool(parse_expr(condition).evaluate(env))
    except ExprError as exc:
        raise SpecError([Problem(spec.source_map.locate_in_scalar(where, exc.offset), exc.message)]) from None


def _existing(spec: LoadedSpec, present: set[str], where: PathKey, prefix: str) -> Callable[[str], str]:
    """Module name -> path in the graph; calling a module that its `if:` left out is an error."""

    def path(name: str) -> str:
        full = f"{prefix}{name}"
        if full not in present:
            where_layer = f"layer {prefix.split('.')[1]}" if prefix else "the model"
            raise SpecError(
                [
                    Problem(
                        spec.where((*where, name, MODULE_IF)),
                        f"module `{name}` does not exist in {where_layer} (its `if:` is false there) "
                        "but the dataflow calls it; choose the call with "
                        "`... if <condition> else ...` in the statement",
                    )
                ]
            )
        return full

    return path


def _statements(spec: LoadedSpec, lines: list[str], scope: Scope, where: PathKey) -> list[Stmt]:
    parsed = parse_statements(lines, scope)
    problems = [
        Problem(spec.source_map.locate_in_scalar((*where, i), s.offset), s.message)
        for i, s in enumerate(parsed)
        if isinstance(s, ExprError)
    ]
    if problems:
        raise SpecError(problems)
    return [s for s in parsed if isinstance(s, Stmt)]


def build_graph(spec: LoadedSpec, config: ResolvedConfig, tp: int = 1) -> ModelGraph:
    """Resolve every module's arguments, build the dataflow program and fuse; errors are located."""
    s = spec.spec
    env = config.as_dict()
    num_layers = _count(spec, env)
    modules = _module_nodes(spec, s.model.modules, "", env, ("model", "modules"), tp)
    for i in range(num_layers):
        modules += _module_nodes(
            spec, s.model.layers.modules, f"{STACK}.{i}.", {**env, "i": i}, ("model", "layers", "modules"), tp
        )
    cache_index = 0
    numbered = []
    for m in modules:
        if get_layer(m.layer).uses_kv_cache:
            m = ModuleNode(m.path, m.layer, m.args, m.declared, cache_index, m.spec_path)
            cache_index += 1
        numbered.append(m)

    names = frozenset(env)
    body = _statements(
        spec,
        s.model.layers.body,
        Scope(frozenset(s.model.layers.modules), names | {LAYER_INDEX}, (BODY_VAR,)),
        ("model", "layers", "body"),
    )
    forward = _statements(
        spec,
        s.model.forward,
        Scope(frozenset(s.model.modules), names, (FORWARD_INPUT,), frozenset({STACK})),
        ("model", "forward"),
    )
    fusable = {m.path: get_layer(m.layer).fuses_residual_add for m in numbered}
    present = {m.path for m in numbered}
    layers = []
    top = ProgramBuilder(env)

    def stack(x: str) -> str:
        y = top.fresh(BODY_VAR)
        top.ops.append(Op(STACK, (y,), (x,)))
        return y

    top_path = _existing(spec, present, ("model", "modules"), "")
    try:
        for i in range(num_layers):  # `if:` and conditional statements may make layers differ
            b = ProgramBuilder({**env, LAYER_INDEX: i})
            prefix = f"{STACK}.{i}."
            exists = _existing(spec, present, ("model", "layers", "modules"), prefix)
            out = b.emit_block(body, {BODY_VAR: BODY_VAR}, _local_names(exists, len(prefix)))[BODY_VAR]
            ops = fuse_residual_norms(b.ops, lambda m, prefix=prefix: fusable[prefix + m])
            layers.append(LayerOps(tuple(ops), out))
        final = top.emit_block(forward, {FORWARD_INPUT: FORWARD_INPUT}, top_path, {STACK: stack})
    except EmitError as exc:
        where = ("model", "forward") if any(exc.stmt is st for st in forward) else ("model", "layers", "body")
        loc = spec.source_map.locate_in_scalar((*where, exc.stmt.index), exc.offset)
        raise SpecError([Problem(loc, exc.message)]) from None
    if FORWARD_OUTPUT not in final:
        raise SpecError([Problem(spec.where(("model", "forward")), "`forward` must assign `logits`")])
    forward_ops = fuse_residual_norms(top.ops, lambda m: fusable[m])
    forward_ops = rename_outputs(forward_ops, {FORWARD_OUTPUT: final[FORWARD_OUTPUT]})
    block = Block(BODY_VAR, tuple(layers))
    program = fuse_residual_norms(unroll(forward_ops, block, STACK, top.counter), lambda m: fusable[m])
    return ModelGraph(s.name, config, tp, num_layers, tuple(numbered), tuple(forward_ops), block, tuple(program))


def _local_names(exists: Callable[[str], str], cut: int) -> Callable[[str], str]:
    """The module's own name, after checking that this layer has it."""
    return lambda name: exists(name)[cut:]


def _count(spec: LoadedSpec, env: dict[str, Any]) -> int:
    repeat = spec.spec.model.layers.repeat
    try:
        n = parse_expr(repeat).evaluate(env) if isinstance(repeat, str) else repeat
    except ExprError as exc:
        raise SpecError([Problem(spec.where(("model", "layers", "repeat")), exc.message)]) from None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_LAYERS:
        raise SpecError(
            [
                Problem(
                    spec.where(("model", "layers", "repeat")),
                    f"repeat must be a layer count in 0..{MAX_LAYERS}, got {n!r}",
                )
            ]
        )
    return n
