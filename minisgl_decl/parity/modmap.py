"""Which transformers module computes what each of our modules computes, from the weight rules.

Each of our modules' parameters are read from checkpoint keys named by the spec's weight
rules; the dotted prefix those keys share (`model.layers.3.self_attn.q_proj.weight`,
`...k_proj.weight`, `...o_proj.weight` -> `model.layers.3.self_attn`) names the
transformers module holding the same weights. Keys are first renamed the way transformers renames them on
load, and the prefix is walked up to the nearest name its model really has. A pairing is
dropped when it cannot be one-to-one: two of our modules on the same transformers module,
or ours on a transformers module that contains another pairing's (e.g. our routed experts
on HF's whole MoE block that also holds the shared expert we keep apart).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from ..graph.build import STACK, ModelGraph
from ..plan.build import rule_for
from ..plan.rules import WeightRule, normalise_rules
from ..spec.loaded import LoadedSpec


@dataclass(frozen=True)
class ModulePair:
    ours: str  # our module path, e.g. `layers.3.attn`
    hf: str  # transformers' module name, e.g. `model.layers.3.self_attn`
    layer: int | None  # the stack index, None for modules outside the layer stack


@dataclass(frozen=True)
class ModuleMap:
    pairs: tuple[ModulePair, ...]
    unpaired: tuple[str, ...]  # our modules with parameters but no one-to-one transformers module

    def hf_of(self, ours: str) -> str | None:
        return next((p.hf for p in self.pairs if p.ours == ours), None)


def _module_of_key(key: str, rename: Callable[[str], str]) -> list[str]:
    """The module path of a checkpoint key in transformers' model: `a.b.c.weight` -> [a, b, c].

    A key with a placeholder (`experts.{e}.w1.weight`) is renamed for two values of it and
    cut where they differ: per-expert modules -> their list, stacked experts -> their module.
    """
    if "{" not in key:
        return rename(key).split(".")[:-1]
    a, b = (rename(re.sub(r"\{\w+\}", str(v), key)).split(".")[:-1] for v in (0, 1))
    return _common([a, b])


def _common(paths: list[list[str]]) -> list[str]:
    out: list[str] = []
    for column in zip(*paths, strict=False):
        if any(c != column[0] for c in column):
            break
        out.append(column[0])
    return out


def _sources(rule: WeightRule) -> list[str]:
    keys = [s.key for s in rule.sources]
    return keys or ([rule.tied_to.key] if rule.tied_to is not None else [])


def _layer_of(path: str) -> int | None:
    head, _, rest = path.partition(".")
    index = rest.split(".", 1)[0]
    return int(index) if head == STACK and index.isdigit() else None


def _contains(outer: str, inner: str) -> bool:
    return outer == "" or inner.startswith(outer + ".")


def module_map(
    spec: LoadedSpec, graph: ModelGraph, hf_modules: Collection[str], rename: Callable[[str], str] = str
) -> ModuleMap:
    """Pair each of our modules that has parameters with a module name in `hf_modules`;
    `rename` maps a checkpoint key to transformers' parameter name (`hf_reference.key_renamer`)."""
    rules = normalise_rules(spec)
    keys: dict[str, list[str]] = {}  # our module path -> checkpoint keys of its parameters
    for name, _decl, node in graph.parameters:
        found = rule_for(name, rules)
        if found is None:
            continue
        rule, i = found
        keys.setdefault(node.path, []).extend(_sources(rule.expand(i)))
    names = set(hf_modules)
    candidate: dict[str, str | None] = {}
    for path, ks in keys.items():
        prefix = _common([_module_of_key(k, rename) for k in ks])
        while prefix and ".".join(prefix) not in names:
            prefix.pop()
        candidate[path] = ".".join(prefix) if prefix else None
    found_hf = [h for h in candidate.values() if h is not None]
    pairs, unpaired = [], []
    for path, hf in candidate.items():
        shared = hf is not None and (
            found_hf.count(hf) > 1 or any(_contains(hf, other) for other in found_hf if other != hf)
        )
        if hf is None or shared:
            unpaired.append(path)
        else:
            pairs.append(ModulePair(path, hf, _layer_of(path)))
    return ModuleMap(tuple(pairs), tuple(unpaired))
