"""Render the graph's program as Python source with jinja2 (sandboxed, autoescape off).

Every value placed in the template is built here from validated data and passed
through `repr`, so spec content can never become code.
"""

from __future__ import annotations

import math
from importlib import resources

from jinja2.sandbox import SandboxedEnvironment

from ..graph.build import FORWARD_INPUT, ModelGraph
from ..graph.program import Op, last_uses

_INFIX = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _v(value: str | float) -> str:
    """A variable name as itself; a constant as a Python literal the interpreter reads the same way."""
    if isinstance(value, str):
        if not value.isidentifier():
            raise ValueError(f"bad variable name {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"bad constant {value!r}")
    if math.isfinite(value):
        return repr(float(value))
    return f"float({str(float(value))!r})"  # inf, -inf and nan have no literal


def _line(op: Op) -> str:
    args = [_v(i) for i in op.inputs]
    if op.kind == "call":
        return f"{op.outputs[0]} = mods[{op.module!r}]({', '.join(args)}, batch)"
    if op.kind == "add_norm":
        return f"{op.outputs[1]}, {op.outputs[0]} = mods[{op.module!r}].forward_add({args[0]}, {args[1]}, batch)"
    return f"{op.outputs[0]} = {args[0]} {_INFIX[op.kind]} {args[1]}"


def render_module(graph: ModelGraph, spec_file: str) -> str:
    lines = []
    for op, frees in zip(graph.program, last_uses(list(graph.program)), strict=True):
        for name in op.outputs:
            if not name.isidentifier() or (name == FORWARD_INPUT and op.kind != "call"):
                raise ValueError(f"bad variable name {name!r}")
        lines.append(_line(op))
        if frees:
            lines.append(f"del {', '.join(frees)}")
    modules = [
        {"path": m.path, "layer": m.layer, "args": ", ".join(f"{k}={v!r}" for k, v in m.args_json().items())}
        for m in graph.modules
    ]
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
    template = env.from_string(resources.files(__package__).joinpath("templates/model.py.j2").read_text())
    return template.render(
        spec_name=graph.spec_name,
        spec_file=repr(spec_file),
        config=[(k, repr(v)) for k, v in graph.config.values.items()],
        modules=modules,
        lines=lines,
    )
