"""Weight rules of a spec, normalised: runtime parameter pattern -> checkpoint sources."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from ..spec.loaded import LoadedSpec
from ..spec.schema import RuleSpec, SourceSpec
from ..spec.yaml_source import PathKey

INDEX = "{i}"
EXPERT = "{e}"


@dataclass(frozen=True)
class Layout:
    """Re-layout along the rule's dim: view as `split` (config expressions or ints), permute by `order`."""

    split: tuple[str | int, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class SourceRef:
    key: str  # pattern, may hold {i}
    transpose: bool = False
    layout: Layout | None = None
    # (expert, experts): one expert's slab of a tensor stacking every expert along dim 0 (a
    # source without `{e}` in a rule with `experts:`)
    stacked: tuple[int, int] | None = None

    def expand(self, i: int | None, pattern: str = INDEX) -> SourceRef:
        key = self.key.replace(pattern, str(i)) if i is not None else self.key
        return SourceRef(key, self.transpose, self.layout, self.stacked)


@dataclass(frozen=True)
class WeightRule:
    target: str  # runtime parameter pattern
    sources: tuple[SourceRef, ...]
    dim: int
    add: float | None
    tied_to: SourceRef | None
    tied_if: str | bool | None
    spec_path: PathKey
    location: str  # file:line of the rule, for messages
    experts: str | int | None = None  # count of `{e}` experts stacked along a new dim 0

    def for_expert(self, e: int, n: int) -> WeightRule:
        """The per-expert rule (expert e of n): `{e}` filled in, or expert e's slab of a source
        that stacks all experts; no stacking (its target is one expert's slice)."""
        return WeightRule(
            f"{self.target}[{e}]",
            tuple(s.expand(e, EXPERT) if EXPERT in s.key else replace(s, stacked=(e, n)) for s in self.sources),
            self.dim,
            self.add,
            None,
            None,
            self.spec_path,
            self.location,
            None,
        )

    def expand(self, i: int | None) -> WeightRule:
        return WeightRule(
            self.target.replace(INDEX, str(i)) if i is not None else self.target,
            tuple(s.expand(i) for s in self.sources),
            self.dim,
            self.add,
            self.tied_to.expand(i) if self.tied_to else None,
            self.tied_if,
            self.spec_path,
            self.location,
            self.experts,
        )


def _source(s: str | SourceSpec) -> SourceRef:
    if isinstance(s, str):
        return SourceRef(s)
    layout = Layout(tuple(s.layout.split), tuple(s.layout.order)) if s.layout is not None else None
    return SourceRef(s.key, s.transpose, layout)


def normalise_rules(spec: LoadedSpec) -> list[WeightRule]:
    rules = []
    for target, raw in spec.spec.weights.params.items():
        path: PathKey = ("weights", "params", target)
        loc = spec.where(path, key=True)
        where = f"{loc.file}:{loc.line}"
        rules.append(_normalise(target, raw, path, where))
    return rules


def _normalise(target: str, raw: Any, path: PathKey, where: str) -> WeightRule:
    if isinstance(raw, str):
        return WeightRule(target, (SourceRef(raw),), 0, None, None, None, path, where)
    if isinstance(raw, list):
        return WeightRule(target, tuple(_source(s) for s in raw), 0, None, None, None, path, where)
    assert isinstance(raw, RuleSpec)
    if raw.concat is not None:
        sources = tuple(_source(s) for s in raw.concat)
    elif raw.from_ is not None:
        sources = (_source(raw.from_),)
    else:
        sources = ()
    tied = _source(raw.tied_to) if raw.tied_to is not None else None
    return WeightRule(target, sources, raw.dim, raw.add, tied, raw.tied_if, path, where, raw.experts)


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching concrete names of a `{i}` pattern (group `i` is the layer index)."""
    parts = pattern.split(INDEX)
    return re.compile(
        "^"
        + r"(?P<i>\d+)".join(re.escape(p) for p in parts[:2])
        + "".join(r"(?P=i)" + re.escape(p) for p in parts[2:])
        + "$"
    )


def ignore_regexes(spec: LoadedSpec) -> list[re.Pattern[str]]:
    """Ignore entries: `{i}` for a layer index, `*` for any run of characters."""
    out = []
    for pat in spec.spec.weights.ignore:
        rx = re.escape(pat).replace(re.escape(INDEX), r"\d+").replace(r"\*", ".*")
        out.append(re.compile("^" + rx + "$"))
    return out
