"""Weight rules of a spec, normalised once (by `spec/compile.py`): runtime parameter pattern ->
checkpoint sources, whatever the shorthand they were written in (a key, a list, a mapping)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import Location
from .located import SpecExpr

INDEX = "{i}"
EXPERT = "{e}"


@dataclass(frozen=True)
class Layout:
    """Re-layout along the rule's dim: view as `split` (config expressions or ints), permute by `order`."""

    split: tuple[SpecExpr | int, ...]
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
    tied_if: SpecExpr | bool | None
    at: Location  # the rule's key
    experts: SpecExpr | int | None = None  # count of `{e}` experts stacked along a new dim 0

    @property
    def location(self) -> str:
        """file:line of the rule, for checkpoint messages."""
        return f"{self.at.file}:{self.at.line}"

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
            self.at,
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
            self.at,
            self.experts,
        )


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching concrete names of a `{i}` pattern (group `i` is the layer index)."""
    parts = pattern.split(INDEX)
    return re.compile(
        "^"
        + r"(?P<i>\d+)".join(re.escape(p) for p in parts[:2])
        + "".join(r"(?P=i)" + re.escape(p) for p in parts[2:])
        + "$"
    )


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """A `weights.ignore` entry: `{i}` for a layer index, `*` for any run of characters."""
    rx = re.escape(pattern).replace(re.escape(INDEX), r"\d+").replace(r"\*", ".*")
    return re.compile("^" + rx + "$")


def rule_for(name: str, rules: Sequence[WeightRule]) -> tuple[WeightRule, int | None] | None:
    """The first rule producing parameter `name`, and the layer index its `{i}` matched."""
    for rule in rules:
        if INDEX in rule.target:
            m = pattern_regex(rule.target).match(name)
            if m:
                return rule, int(m.group("i"))
        elif rule.target == name:
            return rule, None
    return None
