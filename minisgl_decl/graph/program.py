"""The dataflow as programs of ops, and the fusion of residual adds into norms.

A program is in SSA form: every op writes fresh variables. Ops: ``call`` (module,
inputs), ``add``/``sub``/``mul``/``div`` (tensor or constant inputs), ``add_norm``
(fused residual add + norm: outputs the sum and the normed sum) and, in `forward`,
``layers`` (the loop of the layer block over its input).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..spec.expr import parse_expr
from .dataflow import BinOp, Call, Node, Scalar, Stmt, Var

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
class Block:
    """The layer body over local module names (`attn`, not `layers.3.attn`), fused.

    Every layer runs these ops (body statements cannot name the layer index); what differs
    between layers lives in the modules' own arguments (a sliding window, a rope).
    """

    input: str
    output: str
    ops: tuple[Op, ...]


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
        stmts: list[Stmt],
        env: dict[str, str],
        module_path: Callable[[str], str],
        expand: Mapping[str, Callable[[str], str]] | None = None,
    ) -> dict[str, str]:
        """Emit `stmts`; `env` maps source names to SSA names; returns the updated env."""
        env = dict(env)
        for stmt in stmts:
            result = self._emit(stmt.value, env, module_path, expand or {}, stmt.target)
            if isinstance(result, float):
                raise ValueError(f"`{stmt.target}` is a constant, not a tensor")
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
            value = parse_expr(node.source).evaluate(self.config)
            return float(value)
        if isinstance(node, Call):
            args = [self._emit(a, env, module_path, expand, hint) for a in node.args]
            if node.module in expand:
                (arg,) = args
                assert isinstance(arg, str)
                return expand[node.module](arg)
            out = self.fresh(hint)
            self.ops.append(Op("call", (out,), tuple(args), module_path(node.module)))
            return out
        assert isinstance(node, BinOp)
        left = self._emit(node.left, env, module_path, expand, hint)
        right = self._emit(node.right, env, module_path, expand, hint)
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
        replace(op, outputs=tuple(str(r(o)) for o in op.outputs), inputs=tuple(r(i) for i in op.inputs))
        for op in ops
    ]


def unroll(forward: list[Op], block: Block, num_layers: int, stack: str, counter: int) -> list[Op]:
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
        for i in range(num_layers):
            names: dict[Value, Value] = {block.input: current}
            for bop in block.ops:
                outs = []
                for v in bop.outputs:
                    counter += 1
                    names[v] = f"{v.rsplit('_', 1)[0]}_{counter}"
                    outs.append(str(names[v]))
                ops.append(Op(bop.kind, tuple(outs), tuple(names.get(v, v) for v in bop.inputs),
                              f"{stack}.{i}.{bop.module}" if bop.module else None))
            current = names.get(block.output, current)
        alias[op.outputs[0]] = current
    return ops
