"""Build the module graph of a spec for one resolved config and TP size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, is_dataclass, replace
from typing import Any

from pydantic import ValidationError

from ..catalogue import LayerKind, get_layer
from ..catalogue.params import ParamDecl
from ..catalogue.registry import LayerArgs
from ..config.resolve import ResolvedConfig
from ..errors import Location, Problem, SpecError, UserError
from ..spec.dataflow import BODY_VAR, FORWARD_INPUT, FORWARD_OUTPUT, LAYER_INDEX, STACK
from ..spec.expr import ExprError
from ..spec.ir import ModuleDecl, SpecIR, Statements
from ..spec.located import SpecExpr, evaluate
from .program import Block, EmitError, LayerOps, Op, ProgramBuilder, fuse_residual_norms, rename_outputs, unroll

__all__ = ["BODY_VAR", "FORWARD_INPUT", "FORWARD_OUTPUT", "LAYER_INDEX", "STACK", "ModelGraph", "build_graph"]
MAX_LAYERS = 4096


@dataclass(frozen=True)
class ModuleNode:
    path: str
    layer: str
    args: LayerArgs
    declared: tuple[ParamDecl, ...]  # every parameter the layer can have (some may be absent)
    cache_index: int | None
    at: Location  # its declaration in the spec

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


def _resolve_args(kind: LayerKind, decl: ModuleDecl, env: dict[str, Any]) -> LayerArgs:
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for arg in decl.args:
        value = arg.value
        if not isinstance(value, SpecExpr):
            values[arg.name] = value
            continue
        try:
            values[arg.name] = value.evaluate(env)
        except ExprError as exc:
            problems.append(Problem(value.inside(exc.offset), exc.message))
    if problems:
        raise SpecError(problems)
    try:
        return kind.Args(**values)
    except ValidationError as exc:
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            at = decl.arg_at(name) if name else decl.layer_at
            problems.append(Problem(at, f"`{kind.name}` argument `{name}` = {err.get('input')!r}: {err['msg']}"))
        raise SpecError(problems) from None


def _module_nodes(decls: tuple[ModuleDecl, ...], prefix: str, env: dict[str, Any], tp: int) -> list[ModuleNode]:
    nodes = []
    for decl in decls:
        if not _holds(decl.condition, env):
            continue  # `if:` is false here: the module does not exist (no parameters, no call)
        kind = get_layer(decl.layer)
        args = _resolve_args(kind, decl, env)
        try:
            declared = tuple(kind.params(args))
            for p in declared:
                if p.present:
                    p.check_tp(tp, f"{prefix}{decl.name}")
        except UserError as exc:
            raise SpecError([Problem(decl.at, str(exc))]) from None
        nodes.append(ModuleNode(f"{prefix}{decl.name}", decl.layer, args, declared, None, decl.at))
    return nodes


def _holds(condition: SpecExpr | bool | None, env: dict[str, Any]) -> bool:
    if not isinstance(condition, SpecExpr):
        return condition is not False
    try:
        return bool(condition.evaluate(env))
    except ExprError as exc:
        raise SpecError([Problem(condition.inside(exc.offset), exc.message)]) from None


def _existing(decls: tuple[ModuleDecl, ...], present: set[str], prefix: str) -> Callable[[str], str]:
    """Module name -> path in the graph; calling a module that its `if:` left out is an error."""
    if_at = {d.name: d.if_at for d in decls}

    def path(name: str) -> str:
        full = f"{prefix}{name}"
        if full not in present:
            where_layer = f"layer {prefix.split('.')[1]}" if prefix else "the model"
            raise SpecError(
                [
                    Problem(
                        if_at[name],
                        f"module `{name}` does not exist in {where_layer} (its `if:` is false there) "
                        "but the dataflow calls it; choose the call with "
                        "`... if <condition> else ...` in the statement",
                    )
                ]
            )
        return full

    return path


def build_graph(spec: SpecIR, config: ResolvedConfig, tp: int = 1) -> ModelGraph:
    """Resolve every module's arguments, build the dataflow program and fuse; errors are located."""
    env = config.as_dict()
    num_layers = _count(spec, env)
    modules = _module_nodes(spec.modules, "", env, tp)
    for i in range(num_layers):
        modules += _module_nodes(spec.layers.modules, f"{STACK}.{i}.", {**env, LAYER_INDEX: i}, tp)
    cache_index = 0
    numbered = []
    for m in modules:
        if get_layer(m.layer).uses_kv_cache:
            m = replace(m, cache_index=cache_index)
            cache_index += 1
        numbered.append(m)

    body, forward = spec.layers.body, spec.forward
    fusable = {m.path: get_layer(m.layer).fuses_residual_add for m in numbered}
    present = {m.path for m in numbered}
    layers = []
    top = ProgramBuilder(env)

    def stack(x: str) -> str:
        y = top.fresh(BODY_VAR)
        top.ops.append(Op(STACK, (y,), (x,)))
        return y

    top_path = _existing(spec.modules, present, "")
    try:
        for i in range(num_layers):  # `if:` and conditional statements may make layers differ
            b = ProgramBuilder({**env, LAYER_INDEX: i})
            prefix = f"{STACK}.{i}."
            exists = _existing(spec.layers.modules, present, prefix)
            out = b.emit_block(body.stmts, {BODY_VAR: BODY_VAR}, _local_names(exists, len(prefix)))[BODY_VAR]
            ops = fuse_residual_norms(b.ops, lambda m, prefix=prefix: fusable[prefix + m])
            layers.append(LayerOps(tuple(ops), out))
        final = top.emit_block(forward.stmts, {FORWARD_INPUT: FORWARD_INPUT}, top_path, {STACK: stack})
    except EmitError as exc:
        where: Statements = forward if any(exc.stmt is st for st in forward.stmts) else body
        raise SpecError([Problem(where.inside(exc.stmt.index, exc.offset), exc.message)]) from None
    if FORWARD_OUTPUT not in final:
        raise SpecError([Problem(forward.at, "`forward` must assign `logits`")])
    forward_ops = fuse_residual_norms(top.ops, lambda m: fusable[m])
    forward_ops = rename_outputs(forward_ops, {FORWARD_OUTPUT: final[FORWARD_OUTPUT]})
    block = Block(BODY_VAR, tuple(layers))
    program = fuse_residual_norms(unroll(forward_ops, block, STACK, top.counter), lambda m: fusable[m])
    return ModelGraph(spec.name, config, tp, num_layers, tuple(numbered), tuple(forward_ops), block, tuple(program))


def _local_names(exists: Callable[[str], str], cut: int) -> Callable[[str], str]:
    """The module's own name, after checking that this layer has it."""
    return lambda name: exists(name)[cut:]


def _count(spec: SpecIR, env: dict[str, Any]) -> int:
    repeat = spec.layers.repeat
    try:
        n = evaluate(repeat, env)
    except ExprError as exc:
        raise SpecError([Problem(spec.layers.repeat_at, exc.message)]) from None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_LAYERS:
        raise SpecError(
            [
                Problem(
                    spec.layers.repeat_at,
                    f"repeat must be a layer count in 0..{MAX_LAYERS}, got {n!r}",
                )
            ]
        )
    return n
