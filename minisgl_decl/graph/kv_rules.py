"""The KV-cache rule of the dataflow: a module that owns KV-cache state runs at most once per step.

`h = attn(attn(x))` or `layers(layers(x))` would write the same cache slots twice in one
forward step, so cached decoding would silently differ from prefill; validation rejects
the second call at its line and column.
"""

from __future__ import annotations

from typing import Any

from ..catalogue import get_layer
from ..errors import Problem
from ..spec.expr import ExprError
from ..spec.loaded import LoadedSpec
from ..spec.schema import split_module_decl
from ..spec.yaml_source import PathKey
from .build import STACK
from .dataflow import BinOp, Call, Cond, Node, Scope, parse_statements


def kv_modules(modules: dict[str, Any]) -> set[str]:
    """Names of the declared modules whose layer uses the KV cache (bad declarations are reported elsewhere)."""
    out = set()
    for name, decl in modules.items():
        try:
            _cond, layer, _raw = split_module_decl(decl)
            if get_layer(layer).uses_kv_cache:
                out.add(name)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
    return out


def _calls(node: Node) -> list[Call]:
    """Module calls in `node` in evaluation order; of `a if c else b` only one branch runs."""
    if isinstance(node, Call):
        return [c for a in node.args for c in _calls(a)] + [node]
    if isinstance(node, BinOp):
        return _calls(node.left) + _calls(node.right)
    if isinstance(node, Cond):
        body = _calls(node.body)
        return body + [c for c in _calls(node.orelse) if c.module not in {b.module for b in body}]
    return []


def kv_reuse(spec: LoadedSpec, lines: list[str], scope: Scope, where: PathKey, once: set[str]) -> list[Problem]:
    """A problem at every call of a module in `once` after its first call in the statement list."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for stmt in parse_statements(lines, scope):
        if isinstance(stmt, ExprError):
            continue
        for call in _calls(stmt.value):
            if call.module not in once:
                continue
            if call.module in seen:
                what = "runs every layer's KV cache" if call.module == STACK else "owns a KV cache"
                problems.append(
                    Problem(
                        spec.source_map.locate_in_scalar((*where, stmt.index), call.offset),
                        f"`{call.module}` {what} and is already called in this step; a second call "
                        "would write its cache twice (declare a second module instead)",
                    )
                )
            seen.add(call.module)
    return problems
