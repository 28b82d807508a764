"""The dataflow as programs of ops, and the fusion of residual adds into norms.

A program is in SSA form: every op writes fresh variables. Ops: ``call`` (module,
inputs), ``add``/``sub``/``mul``/``div`` (tensor or constant inputs), ``add_norm``
(fused residual add + norm: outputs the sum and the normed sum) and, in `forward`,
``layers`` (the loop of the layer block over its input).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..spec.dataflow import BinOp, Call, Cond, Node, Scalar, Stmt, Var
from ..spec.expr import ExprError

Value = str | float  # a variable name or a folded constant


@dataclass(frozen=True)
class Op:
    kind: str  # call | add | sub | mul | div | add_norm
    outputs: tuple[str, ...]
    inputs: tuple[Value, ...]
    module: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"op": self.kind, "out": list(self.outputs), "in": list(self.inputs), "module": self.module}


@dataclass(frozen=True)
class LayerOps:
    """One layer's body ops over local module names (`attn`, not `layers.3.attn`), fused."""

    ops: tuple[Op, ...]
    output: str


@dataclass(frozen=True)
class Block:
    """The layer body for every layer. Layers usually run identical ops (what differs lives
    in the modules' arguments: a window, a rope); `if:` on modules and conditional
    statements can make some differ."""

    input: str
    layers: tuple[LayerOps, ...]


class EmitError(Exception):
    """A statement that parsed but cannot be unrolled for this config (e.g. `x / 0`, a string constant)."""

    def __init__(self, stmt: Stmt, message: str, offset: int) -> None:
        super().__init__(message)
        self.stmt, self.message, self.offset = stmt, message, offset


def _constant(node: Scalar, config: Mapping[str, Any]) -> float:
    try:
        value = node.expr.evaluate(config)
    except ExprError as exc:
        raise ExprError(exc.message, node.offset + exc.offset) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExprError(f"`{node.source}` = {value!r} is not a number; tensors combine with numbers only", node.offset)
    try:
        number = float(value)
    except OverflowError:
        raise ExprError(f"`{node.source}` is too large for a float", node.offset) from None
    if number != number:
        raise ExprError(f"`{node.source}` is NaN", node.offset)
    return number


@dataclass
class ProgramBuilder:
    config: Mapping[str, Any]
    ops: list[Op] = field(default_factory=list)
    counter: int = 0

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def emit_block(
        self,
        stmts: Sequence[Stmt],
        env: dict[str, str],
        module_path: Callable[[str], str],
        expand: Mapping[str, Callable[[str], str]] | None = None,
    ) -> dict[str, str]:
        """Emit `stmts`; `env` maps source names to SSA names; returns the updated env."""
        env = dict(env)
        for stmt in stmts:
            try:
                result = self._emit(stmt.value, env, module_path, expand or {}, stmt.target)
            except ExprError as exc:
                raise EmitError(stmt, exc.message, exc.offset) from None
            if isinstance(result, float):
                raise EmitError(stmt, f"`{stmt.target}` is a constant, not a tensor", 0)
            env[stmt.target] = result
        return env

    def _emit(
        self,
        node: Node,
        env: dict[str, str],
        module_path: Callable[[str], str],
        expand: Mapping[str, Callable[[str], str]],
        hint: str,
    ) -> Value:
        if isinstance(node, Var):
            return env[node.name]
        if isinstance(node, Scalar):
            return _constant(node, self.config)
        if isinstance(node, Cond):  # chosen now: only the taken branch is emitted
            try:
                test = node.test.expr.evaluate(self.config)
            except ExprError as exc:
                raise ExprError(exc.message, node.test.offset + exc.offset) from None
            taken = node.body if test else node.orelse
            return self._emit(taken, env, module_path, expand, hint)
        if isinstance(node, Call):
            args = [self._emit(a, env, module_path, expand, hint) for a in node.args]
            if node.module in expand:
                if len(args) != 1 or not isinstance(args[0], str):
                    raise ExprError(f"`{node.module}` takes exactly one tensor argument", node.offset)
                return expand[node.module](args[0])
            out = self.fresh(hint)
            self.ops.append(Op("call", (out,), tuple(args), module_path(node.module)))
            return out
        if not isinstance(node, BinOp):
            raise ExprError(f"cannot emit {type(node).__name__}", 0)
        left = self._emit(node.left, env, module_path, expand, hint)
        right = self._emit(node.right, env, module_path, expand, hint)
        if node.op == "div" and isinstance(right, float) and right == 0.0:
            raise ExprError("division by zero (the divisor is the constant 0 for this config)", node.offset)
        out = self.fresh(hint)
        self.ops.append(Op(node.op, (out,), (left, right)))
        return out


def fuse_residual_norms(ops: list[Op], fusable: Callable[[str], bool]) -> list[Op]:
    """Rewrite `t = a + b; ...; u = norm(t)` into `t, u = add_norm(a, b; norm)`.

    Valid wherever the norm reads only `t`: the fused op computes `u` at the add's
    position, which only makes `u` available earlier.
    """
    producer = {op.outputs[0]: i for i, op in enumerate(ops) if op.kind == "add"}
    fused: dict[int, Op] = {}
    dropped: set[int] = set()
    for j, op in enumerate(ops):
        if op.kind != "call" or op.module is None or not fusable(op.module) or len(op.inputs) != 1:
            continue
        src = op.inputs[0]
        k = producer.get(src) if isinstance(src, str) else None
        if k is None or k in fused:
            continue
        add = ops[k]
        if not all(isinstance(v, str) for v in add.inputs):
            continue
        fused[k] = Op("add_norm", (add.outputs[0], op.outputs[0]), add.inputs, op.module)
        dropped.add(j)
    return [fused.get(i, op) for i, op in enumerate(ops) if i not in dropped]


def last_uses(ops: list[Op]) -> list[tuple[str, ...]]:
    """For each op, the variables whose last read is that op (freed after it runs)."""
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for v in op.inputs:
            if isinstance(v, str):
                last[v] = i
    frees: list[list[str]] = [[] for _ in ops]
    for name, i in last.items():
        frees[i].append(name)
    return [tuple(sorted(f)) for f in frees]


def rename_outputs(ops: list[Op], final: Mapping[str, str]) -> list[Op]:
    """Give the program's results stable names (e.g. the SSA name of `logits` -> `logits`)."""
    mapping = {ssa: name for name, ssa in final.items()}

    def r(v: Value) -> Value:
        return mapping.get(v, v) if isinstance(v, str) else v

    return [
        replace(op, outputs=tuple(str(r(o)) for o in op.outputs), inputs=tuple(r(i) for i in op.inputs)) for op in ops
    ]


def unroll(forward: list[Op], block: Block, stack: str, counter: int) -> list[Op]:
    """One straight-line program: each `layers` op replaced by every layer's block ops.

    Module names become paths (`layers.3.attn`); block variables get fresh names
    numbered from `counter` on (above every name in `forward`).
    """
    ops: list[Op] = []
    alias: dict[Value, Value] = {}  # a `layers` op's output -> the last layer's output
    for op in forward:
        inputs = tuple(alias.get(v, v) for v in op.inputs)
        if op.kind != stack:
            ops.append(replace(op, inputs=inputs))
            continue
        current = inputs[0]
        for i, layer in enumerate(block.layers):
            names: dict[Value, Value] = {block.input: current}
            for bop in layer.ops:
                outs = []
                for v in bop.outputs:
                    counter += 1
                    names[v] = f"{v.rsplit('_', 1)[0]}_{counter}"
                    outs.append(str(names[v]))
                ops.append(
                    Op(
                        bop.kind,
                        tuple(outs),
                        tuple(names.get(v, v) for v in bop.inputs),
                        f"{stack}.{i}.{bop.module}" if bop.module else None,
                    )
                )
            current = names.get(layer.output, current)
        alias[op.outputs[0]] = current
    return ops
