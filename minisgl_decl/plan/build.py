"""Build the target-centric loader plan for every TP rank, checked against checkpoint headers.

For each runtime parameter on each rank the plan lists the checkpoint reads that fill
it: the tensor, the slice of it, and where the slice lands in the local parameter.
The full (unsharded) parameter is the concatenation of the rule's sources along the
rule's `dim` (a single fused source is the same thing with one part); the parameter's
TP role picks which ranges of that full tensor each rank holds. Building the plan needs
only safetensors headers, so every problem is found before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..catalogue.params import ParamDecl, Replicated
from ..errors import Problem, SpecError
from ..graph.build import ModelGraph
from ..spec.expr import ExprError, parse_expr
from ..spec.loaded import LoadedSpec
from .checkpoint import CheckpointError, CheckpointIndex, TensorInfo
from .rules import SourceRef, WeightRule, ignore_regexes, normalise_rules, pattern_regex

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
Range = tuple[int, int]


@dataclass(frozen=True)
class Read:
    """Copy `tensor[src]` (optionally transposed) into `local[dst]` (per-dim [start, stop))."""

    key: str
    file: str
    src: tuple[Range, ...]
    dst: tuple[Range, ...]
    transpose: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "file": self.file, "src": [list(r) for r in self.src],
                "dst": [list(r) for r in self.dst], "transpose": self.transpose}


@dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]  # local shape on this rank
    full_shape: tuple[int, ...]
    role: str
    reads: tuple[Read, ...]
    add: float | None
    rule: str  # file:line of the weight rule

    def to_json(self) -> dict[str, Any]:
        return {"param": self.name, "shape": list(self.shape), "full_shape": list(self.full_shape),
                "role": self.role, "rule": self.rule, "add": self.add,
                "reads": [r.to_json() for r in self.reads]}


@dataclass(frozen=True)
class RankPlan:
    rank: int
    params: tuple[ParamPlan, ...]


@dataclass(frozen=True)
class LoadPlan:
    tp: int
    checkpoint: str
    ranks: tuple[RankPlan, ...]
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "minisgl-decl.load-plan/1",
            "tp": self.tp,
            "checkpoint": self.checkpoint,
            "warnings": list(self.warnings),
            "ranks": [{"rank": r.rank, "params": [p.to_json() for p in r.params]} for r in self.ranks],
        }


def rule_for(name: str, rules: list[WeightRule]) -> tuple[WeightRule, int | None] | None:
    for rule in rules:
        if "{i}" in rule.target:
            m = pattern_regex(rule.target).match(name)
            if m:
                return rule, int(m.group("i"))
        elif rule.target == name:
            return rule, None
    return None


def _source_shape(info: TensorInfo, transpose: bool) -> tuple[int, ...]:
    return tuple(reversed(info.shape)) if transpose else info.shape


def _tied(rule: WeightRule, config: dict[str, Any], spec: LoadedSpec) -> bool:
    if rule.tied_to is None:
        return False
    cond = rule.tied_if
    if isinstance(cond, bool) or cond is None:
        return bool(cond)
    try:
        return bool(parse_expr(cond).evaluate(config))
    except ExprError as exc:
        raise SpecError([Problem(spec.where((*rule.spec_path, "tied_if")), exc.message)]) from None


def build_plan(spec: LoadedSpec, graph: ModelGraph, ckpt: CheckpointIndex) -> LoadPlan:
    """The plan for every rank of `graph.tp`; raises `CheckpointError` listing every problem."""
    rules = normalise_rules(spec)
    config = graph.config.as_dict()
    problems: list[str] = []
    warnings: list[str] = []
    consumed: set[str] = set()
    resolved: list[tuple[str, ParamDecl, WeightRule, list[tuple[SourceRef, TensorInfo]]]] = []
    for name, decl, _module in graph.parameters:
        found = rule_for(name, rules)
        if found is None:
            problems.append(f"parameter `{name}` ({decl.role_name}, shape {list(decl.shape)}) has no weight rule "
                            f"in {spec.file}; add one under weights.params")
            continue
        rule, i = found
        rule = rule.expand(i)
        sources = rule.sources
        if _tied(rule, config, spec):
            assert rule.tied_to is not None
            sources = (rule.tied_to,)
            for s in rule.sources:
                if s.key in ckpt.tensors:
                    consumed.add(s.key)
                    warnings.append(f"`{s.key}` is in the checkpoint but the config ties `{name}` to "
                                    f"`{rule.tied_to.key}` (rule {rule.location}); it is not used, as in transformers")
        infos = []
        for s in sources:
            info = ckpt.tensors.get(s.key)
            if info is None:
                hint = ""
                if rule.tied_to is not None:
                    hint = (f"; the config does not tie it to `{rule.tied_to.key}` "
                            f"(tied_if: {rule.tied_if!r} is false), so the checkpoint must hold it")
                problems.append(f"missing tensor `{s.key}` for `{name}` (rule {rule.location}){hint}")
                continue
            consumed.add(s.key)
            infos.append((s, info))
        if len(infos) != len(sources):
            continue
        problems.extend(_check_shapes(name, decl, rule, infos))
        resolved.append((name, decl, rule, infos))
    ignored = ignore_regexes(spec)
    for key in sorted(ckpt.tensors):
        if key not in consumed and not any(rx.match(key) for rx in ignored):
            info = ckpt.tensors[key]
            problems.append(f"unexpected tensor `{key}` {list(info.shape)} in {info.file}: no weight rule reads it "
                            f"(add it to weights.ignore in {spec.file} if it is not needed)")
    if problems:
        raise CheckpointError(problems)
    ranks = []
    for rank in range(graph.tp):
        params = [
            ParamPlan(name, decl.local_shape(graph.tp), decl.shape, decl.role_name,
                      tuple(_reads(decl, rule, infos, graph.tp, rank)), rule.add, rule.location)
            for name, decl, rule, infos in resolved
        ]
        ranks.append(RankPlan(rank, tuple(params)))
    return LoadPlan(graph.tp, str(ckpt.directory), tuple(ranks), tuple(warnings))


def _check_shapes(
    name: str, decl: ParamDecl, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]]
) -> list[str]:
    problems = []
    full = decl.shape
    d = rule.dim
    total = 0
    for s, info in infos:
        if info.dtype not in FLOAT_DTYPES:
            problems.append(f"`{s.key}` has dtype {info.dtype}; `{name}` needs a floating type "
                            f"({', '.join(FLOAT_DTYPES)}) (rule {rule.location})")
        shape = _source_shape(info, s.transpose)
        if len(shape) != len(full):
            problems.append(f"`{s.key}` has shape {list(info.shape)}; `{name}` expects a {len(full)}-d tensor "
                            f"{list(full)} (rule {rule.location})")
            return problems
        other_ok = all(a == b for k, (a, b) in enumerate(zip(shape, full, strict=True)) if k != d)
        if not other_ok:
            want = [f if k != d else "*" for k, f in enumerate(full)]
            problems.append(f"wrong shape for `{s.key}`: expected {want} (concatenated along dim {d} into "
                            f"`{name}` {list(full)}), found {list(info.shape)} (rule {rule.location})")
        total += shape[d] if len(shape) > d else 0
    if not problems and total != full[d]:
        parts = " + ".join(str(_source_shape(i, s.transpose)[d]) for s, i in infos)
        what = "split evenly into" if len(infos) == 1 else "concatenate to"
        problems.append(f"wrong shape for `{name}`: sources along dim {d} ({parts} = {total}) do not {what} "
                        f"the expected {full[d]} (rule {rule.location})")
    return problems


def _reads(
    decl: ParamDecl, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]], tp: int, rank: int
) -> list[Read]:
    full = decl.shape
    cdim = rule.dim
    if isinstance(decl.role, Replicated) or not full:
        sdim, pieces = cdim, [(0, full[cdim] if full else 1)]
    else:
        sdim, pieces = decl.role.dim, decl.rank_pieces(tp, rank)
    reads: list[Read] = []
    local_off = 0
    for a, b in pieces:
        real_b = min(b, full[sdim]) if full else b
        src_off = 0
        for s, info in infos:
            n = _source_shape(info, s.transpose)[cdim]
            src = [(0, x) for x in _source_shape(info, s.transpose)]
            dst = [(0, x) for x in full]
            if sdim == cdim:
                lo, hi = max(a, src_off), min(real_b, src_off + n)
                if lo < hi:
                    src[cdim] = (lo - src_off, hi - src_off)
                    dst[sdim] = (local_off + lo - a, local_off + hi - a)
                    reads.append(_read(s, info, src, dst))
            elif a < real_b:
                src[sdim] = (a, real_b)
                dst[sdim] = (local_off, local_off + real_b - a)
                dst[cdim] = (src_off, src_off + n)
                reads.append(_read(s, info, src, dst))
            src_off += n
        local_off += b - a
    return reads


def _read(s: SourceRef, info: TensorInfo, src: list[Range], dst: list[Range]) -> Read:
    stored = tuple(reversed(src)) if s.transpose else tuple(src)
    return Read(s.key, info.file, stored, tuple(dst), s.transpose)


def unused_rule_targets(spec: LoadedSpec, graph: ModelGraph) -> list[str]:
    names = [n for n, _, _ in graph.parameters]
    return [r.target for r in normalise_rules(spec)
            if not any((pattern_regex(r.target).match(n) if "{i}" in r.target else r.target == n) for n in names)]

