"""The KV-cache rule of the dataflow: a module that owns KV-cache state runs at most once per step.

`h = attn(attn(x))` or `layers(layers(x))` would write the same cache slots twice in one
forward step, so cached decoding would silently differ from prefill; validation rejects
the second call at its line and column.
"""

from __future__ import annotations

from ..catalogue import catalogue_names, get_layer
from ..errors import Problem
from ..spec.dataflow import STACK, BinOp, Call, Cond, Node
from ..spec.ir import ModuleDecl, Statements


def kv_modules(modules: tuple[ModuleDecl, ...]) -> set[str]:
    """Names of the declared modules whose layer uses the KV cache (unknown layers are reported elsewhere)."""
    known = set(catalogue_names())
    return {m.name for m in modules if m.layer in known and get_layer(m.layer).uses_kv_cache}


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


def kv_reuse(statements: Statements, once: set[str]) -> list[Problem]:
    """A problem at every call of a module in `once` after its first call in the statement list."""
    problems: list[Problem] = []
    seen: set[str] = set()
    for stmt in statements.stmts:
        for call in _calls(stmt.value):
            if call.module not in once:
                continue
            if call.module in seen:
                what = "runs every layer's KV cache" if call.module == STACK else "owns a KV cache"
                problems.append(
                    Problem(
                        statements.inside(stmt.index, call.offset),
                        f"`{call.module}` {what} and is already called in this step; a second call "
                        "would write its cache twice (declare a second module instead)",
                    )
                )
            seen.add(call.module)
    return problems
