"""Render a model graph as a Python module: a `block` function for one layer, applied in
a loop by `forward` (one function per distinct layer program when `if:` makes layers
differ). The runtime executes exactly this source (`runtime/model.py`).

Why executing it is safe: the source is our jinja2 template (sandboxed, autoescape off)
filled only with text built here, and every piece of that text is checked on the way in:

- every name placed in code (variables, module locals) is a Python identifier that the
  compiler already checked (statement targets and module names parse as identifiers;
  SSA suffixes are ours) and `_ident` re-checks it, keywords excluded;
- every constant is a number folded by the expression evaluator and written with
  `repr(float)` (or `float('inf')`-style for non-finite values);
- spec strings (file name, config values, layer arguments) appear only in comments,
  through `_comment`, which cannot end the comment line.

No spec string reaches the code itself.

The residual add that ends a block is not computed in the block: the block returns its
two operands and the next block's first norm adds them (`forward_add`, one fused
add+RMSNorm), as does the final norm after the loop. Per-layer differences are data:
each layer's modules carry their own arguments (a sliding window, a rope), and each
layer's `(block, modules)` pair names the function it runs.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jinja2.sandbox import SandboxedEnvironment

from ..catalogue import get_layer
from ..graph.build import FORWARD_INPUT, FORWARD_OUTPUT, STACK, ModelGraph
from ..graph.program import LayerOps, Op, last_uses

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
#: names the template itself uses
_RESERVED = frozenset(
    {"torch", "Any", "ForwardBatch", "block", "forward", "top", "layers", "layer", "residual", "batch"}
)


@dataclass(frozen=True)
class Rendered:
    """The module source and how to call its `forward(top, layers, tokens, batch)`."""

    source: str
    top: tuple[str, ...]  # module paths, in the order of the `top` tuple
    blocks: tuple[tuple[str, tuple[str, ...]], ...]  # (function, module names in its tuple's order)
    which: tuple[int, ...]  # the block each layer runs


def _ident(name: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"internal error: {name!r} is not a Python identifier")
    return name


def _comment(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _const(value: float) -> str:
    value = float(value)
    return repr(value) if math.isfinite(value) else f"float({str(value)!r})"


def _locals(modules: list[str], taken: set[str]) -> dict[str, str]:
    """A local variable name for each module, clear of variables and template names."""
    out: dict[str, str] = {}
    for m in modules:
        name = _ident(m)
        while name in taken or name in _RESERVED:
            name += "_m"
        taken.add(name)
        out[m] = name
    return out


def _called(ops: list[Op]) -> list[str]:
    return list(dict.fromkeys(op.module for op in ops if op.module is not None))


def _variables(ops: list[Op]) -> set[str]:
    return {v for op in ops for v in (*op.inputs, *op.outputs) if isinstance(v, str)}


class _Lines:
    """Source lines for ops; `mods` maps module names to their local variables."""

    def __init__(self, mods: dict[str, str]) -> None:
        self.mods = mods
        self.out: list[str] = []

    def op(self, op: Op) -> None:
        a = [_ident(v) if isinstance(v, str) else _const(v) for v in op.inputs]
        outs = [_ident(o) for o in op.outputs]
        if op.kind == "call":
            self.out.append(f"{outs[0]} = {self.mods[op.module or '']}({', '.join(a)}, batch)")
        elif op.kind == "add_norm":  # forward_add returns (normed, sum); the op lists (sum, normed)
            self.out.append(f"{outs[1]}, {outs[0]} = {self.mods[op.module or '']}.forward_add({a[0]}, {a[1]}, batch)")
        else:
            self.out.append(f"{outs[0]} = {a[0]} {_INFIX[op.kind]} {a[1]}")

    def frees(self, names: tuple[str, ...], keep: set[str]) -> None:
        names = tuple(n for n in names if n not in keep)
        if names:
            self.out.append(f"del {', '.join(_ident(n) for n in names)}")


def _fusable_first_use(ops: list[Op], var: str, fusable: set[str]) -> int | None:
    """Index of the first op reading `var` if it is a fusable norm of `var` alone."""
    for j, op in enumerate(ops):
        if var in op.inputs:
            ok = op.kind == "call" and op.module in fusable and op.inputs == (var,)
            return j if ok else None
    return None


def _carries(layer: LayerOps, input_var: str, fusable: set[str]) -> bool:
    """Whether this layer can hand its last residual add to the next layer's first norm."""
    last = layer.ops[-1] if layer.ops else None
    return (
        last is not None
        and last.kind == "add"
        and last.outputs == (layer.output,)
        and all(isinstance(v, str) for v in last.inputs)
        and _fusable_first_use(list(layer.ops), input_var, fusable) is not None
    )


def _block(layer: LayerOps, input_var: str, fusable: set[str], carries: bool) -> tuple[list[str], list[str]]:
    """(lines, module names in call order) of one block function."""
    ops = list(layer.ops)
    last = ops[-1]
    entry = _fusable_first_use(ops, input_var, fusable) if carries else None
    body = ops[:-1] if carries else ops
    returned = {str(v) for v in last.inputs} if carries else {layer.output}
    modules = _called(ops)
    mods = _locals(modules, _variables(ops))
    lines = _Lines(mods)
    for i, (op, frees) in enumerate(zip(body, last_uses(body), strict=True)):
        if i == entry:
            n, m, x = _ident(op.outputs[0]), mods[op.module or ""], _ident(input_var)
            lines.out += [
                "if residual is None:",
                f"    {n} = {m}({x}, batch)",
                "else:",
                f"    {n}, {x} = {m}.forward_add({x}, residual, batch)",
            ]
        else:
            lines.op(op)
        lines.frees(frees, returned)
    head = [f"{', '.join(mods[m] for m in modules)}{',' if len(modules) == 1 else ''} = layer"] if modules else []
    if carries:  # (new sublayer output, residual stream)
        tail = f"return {_ident(str(last.inputs[1]))}, {_ident(str(last.inputs[0]))}"
    else:
        tail = f"return {_ident(layer.output)}"
    return head + lines.out + [tail], modules


def _forward(graph: ModelGraph, fusable: set[str], carries: bool) -> tuple[list[str], list[str]]:
    ops = list(graph.forward)
    modules = _called(ops)
    mods = _locals(modules, _variables(ops))
    lines = _Lines(mods)
    head = [f"{', '.join(mods[m] for m in modules)}{',' if len(modules) == 1 else ''} = top"] if modules else []
    fuse_at: dict[int, str] = {}  # op index -> the loop output its fused norm adds `residual` to
    for i, op in enumerate(ops):
        if i in fuse_at:
            n, m, x = _ident(op.outputs[0]), mods[op.module or ""], fuse_at[i]
            lines.out.append(f"{n}, {x} = {m}.forward_add({x}, residual, batch)")
        elif op.kind == STACK:
            x, y = _ident(str(op.inputs[0])), _ident(op.outputs[0])
            if not graph.num_layers:
                lines.out.append(f"{y} = {x}")
            elif carries:
                lines.out += [
                    f"{y}, residual = {x}, None",
                    "for block, layer in layers:",
                    f"    {y}, residual = block(layer, {y}, residual, batch)",
                ]
                j = _fusable_first_use(ops[i + 1 :], y, fusable)
                if j is None:
                    lines.out.append(f"{y} = {y} + residual")
                else:
                    fuse_at[i + 1 + j] = y
            else:
                lines.out += [f"{y} = {x}", "for block, layer in layers:", f"    {y} = block(layer, {y}, batch)"]
        else:
            lines.op(op)
    return head + lines.out + [f"return {FORWARD_OUTPUT}"], modules


def render_module(graph: ModelGraph, spec_file: str) -> Rendered:
    kinds = {m.path: m for m in graph.modules}
    fusable_layer = {
        m.path.split(".", 2)[2] for m in graph.modules if m.path.startswith(f"{STACK}.") and _fuses(m.layer)
    }
    fusable_top = {m.path for m in graph.modules if "." not in m.path and _fuses(m.layer)}
    variants = list(dict.fromkeys(graph.block.layers))  # distinct layer programs, first-seen order
    which = tuple(variants.index(layer) for layer in graph.block.layers)
    carries = bool(variants) and all(_carries(v, graph.block.input, fusable_layer) for v in variants)
    blocks = []
    for k, v in enumerate(variants):
        lines, names = _block(v, graph.block.input, fusable_layer, carries)
        blocks.append(
            {
                "name": "block" if len(variants) == 1 else f"block_{k}",
                "lines": lines,
                "modules": _comment(", ".join(names)),
                "names": tuple(names),
            }
        )
    forward_lines, top = _forward(graph, fusable_top, carries)
    modules = [f"{m}: {kinds[m].layer}({_args(kinds[m].args_json())})" for m in top]
    local = list(dict.fromkeys(n for b in blocks for n in b["names"]))
    for name in local:
        paths = [f"{STACK}.{i}.{name}" for i in range(graph.num_layers) if f"{STACK}.{i}.{name}" in kinds]
        per_layer = [kinds[p].args_json() for p in paths]
        modules.append(f"{STACK}[i].{name}: {kinds[paths[0]].layer}({_args(per_layer[0])})")
        for key in per_layer[0]:
            values = [a[key] for a in per_layer]
            if any(v != values[0] for v in values):
                modules.append(f"    {key} by layer: {values!r}")
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
    template = env.from_string(resources.files(__package__).joinpath("templates/model.py.j2").read_text())
    source = template.render(
        spec_name=_comment(graph.spec_name),
        spec_file=_comment(repr(spec_file)),
        config=[_comment(f"{k} = {v!r}") for k, v in graph.config.values.items()],
        modules=[_comment(m) for m in modules],
        top=_comment(", ".join(top)),
        blocks=blocks,
        which=_comment(repr(list(which))) if len(variants) > 1 else "",
        carries=carries,
        forward=forward_lines,
        tokens=_ident(FORWARD_INPUT),
    )
    return Rendered(source, tuple(top), tuple((b["name"], b["names"]) for b in blocks), which)


def _fuses(layer: str) -> bool:
    return get_layer(layer).fuses_residual_add


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())
