"""Build the target-centric loader plan for every TP rank, checked against checkpoint headers.

For each runtime parameter on each rank the plan lists the checkpoint reads that fill
it: the tensor, the slice of it, and where the slice lands in the local parameter.
The full (unsharded) parameter is the concatenation of the rule's sources along the
rule's `dim` (a single fused source is the same thing with one part); the parameter's
TP role picks which ranges of that full tensor each rank holds. Building the plan needs
only safetensors headers, so every problem is found before anything is allocated.
"""

from __future__ import annotations

from typing import Any

from ..catalogue.params import ParamDecl, Replicated
from ..errors import Problem, SpecError
from ..graph.build import ModelGraph
from ..spec.expr import ExprError, parse_expr
from ..spec.loaded import LoadedSpec
from .checkpoint import CheckpointError, CheckpointIndex, TensorInfo
from .checks import check_sources, dtype_problems, expected_part_shape, source_shape
from .model import LoadPlan, ParamPlan, Range, RankPlan, Read
from .relayout import layout_problems, relayout
from .rules import SourceRef, WeightRule, ignore_regexes, normalise_rules, pattern_regex

__all__ = ["LoadPlan", "ParamPlan", "RankPlan", "Read", "build_plan", "rule_for"]


def rule_for(name: str, rules: list[WeightRule]) -> tuple[WeightRule, int | None] | None:
    for rule in rules:
        if "{i}" in rule.target:
            m = pattern_regex(rule.target).match(name)
            if m:
                return rule, int(m.group("i"))
        elif rule.target == name:
            return rule, None
    return None


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


def build_plan(spec: LoadedSpec, graph: ModelGraph, ckpt: CheckpointIndex, dtype: str = "F32") -> LoadPlan:
    """The plan for every rank of `graph.tp`; raises `CheckpointError` listing every problem.

    Needs only the checkpoint's headers: nothing is read or allocated here.
    """
    rules = normalise_rules(spec)
    config = graph.config.as_dict()
    problems: list[str] = []
    warnings: list[str] = []
    consumed: set[str] = set()
    # (name, full decl, rule, [(expert index or None, part decl, part rule, sources)])
    resolved: list[tuple[str, ParamDecl, WeightRule, list[_Part]]] = []
    for name, decl, _module in graph.parameters:
        found = rule_for(name, rules)
        if found is None:
            where = spec.where(("weights", "params"), key=True)
            problems.append(
                f"parameter `{name}` ({decl.role_name}, shape {list(decl.shape)}) has no weight "
                f"rule: expected an entry under weights.params ({where.file}:{where.line})"
            )
            continue
        rule, i = found
        rule = rule.expand(i)
        parts: list[_Part] = []
        for e, part_decl, part_rule in _expert_parts(name, decl, rule, config, spec, problems):
            infos = _sources(name, part_decl, part_rule, config, spec, ckpt, consumed, problems, warnings)
            if infos is not None:
                problems.extend(check_sources(name, part_decl, part_rule, infos))
                problems.extend(layout_problems(name, part_rule, infos, config))
                parts.append((e, part_decl, part_rule, infos))
        resolved.append((name, decl, rule, parts))
    problems.extend(_unconsumed(spec, ckpt, consumed))
    if problems:
        raise CheckpointError(problems)
    ranks = []
    for rank in range(graph.tp):
        params = [
            ParamPlan(
                name,
                decl.local_shape(graph.tp),
                decl.shape,
                decl.role_name,
                tuple(
                    r
                    for e, pd, pr, infos in parts
                    for r in _at_expert(
                        e, relayout(_reads(pd, pr, infos, graph.tp, rank), [s for s, _ in infos], pr.dim, config)
                    )
                ),
                rule.add,
                rule.location,
                rule.dim,
            )
            for name, decl, rule, parts in resolved
        ]
        ranks.append(RankPlan(rank, tuple(params)))
    return LoadPlan(graph.tp, str(ckpt.directory), tuple(ranks), tuple(warnings), dtype)


_Part = tuple[int | None, ParamDecl, WeightRule, list[tuple[SourceRef, TensorInfo]]]


def _expert_parts(
    name: str, decl: ParamDecl, rule: WeightRule, config: dict[str, Any], spec: LoadedSpec, problems: list[str]
) -> list[tuple[int | None, ParamDecl, WeightRule]]:
    """The whole parameter, or one part per expert for a rule with `experts:` (stacked along dim 0)."""
    if rule.experts is None:
        return [(None, decl, rule)]
    try:
        n = parse_expr(rule.experts).evaluate(config) if isinstance(rule.experts, str) else rule.experts
    except ExprError as exc:
        raise SpecError([Problem(spec.where((*rule.spec_path, "experts")), exc.message)]) from None
    if not decl.shape or n != decl.shape[0]:
        problems.append(
            f"`{name}` stacks {n!r} experts (rule {rule.location}) but the parameter's leading "
            f"dimension is {decl.shape[0] if decl.shape else 'missing'} (shape {list(decl.shape)})"
        )
        return []
    return [(e, decl.per_expert(), rule.for_expert(e, n)) for e in range(n)]


def _sources(
    name: str,
    decl: ParamDecl,
    rule: WeightRule,
    config: dict[str, Any],
    spec: LoadedSpec,
    ckpt: CheckpointIndex,
    consumed: set[str],
    problems: list[str],
    warnings: list[str],
) -> list[tuple[SourceRef, TensorInfo]] | None:
    """The checkpoint tensors a rule reads (the tied source when tied); None if any is missing."""
    sources = rule.sources
    if _tied(rule, config, spec):
        assert rule.tied_to is not None
        sources = (rule.tied_to,)
        for s in rule.sources:
            if s.key in ckpt.tensors:
                consumed.add(s.key)
                warnings.append(
                    f"`{s.key}` is in the checkpoint but the config ties `{name}` to "
                    f"`{rule.tied_to.key}` (rule {rule.location}); it is not used, "
                    "as in transformers"
                )
    infos = []
    for k, s in enumerate(sources):
        info = ckpt.tensors.get(s.key)
        if info is None:
            hint = ""
            if rule.tied_to is not None and sources is rule.sources:
                hint = (
                    f"; the config does not tie it to `{rule.tied_to.key}` "
                    f"(tied_if: {rule.tied_if!r} is false), so the checkpoint must hold it"
                )
            own = sources is rule.sources
            shape = expected_part_shape(decl, rule, k) if own else str(list(decl.shape))
            problems.append(
                f"missing tensor `{s.key}` for `{name}` (rule {rule.location}): "
                f"expected shape {shape}, found no such tensor in the checkpoint{hint}"
            )
            continue
        consumed.add(s.key)
        if s.stacked is not None:
            slab = _expert_slab(name, s.key, s.stacked, info, rule, problems)
            if slab is None:
                continue
            info = slab
        infos.append((s, info))
    if len(infos) != len(sources):
        problems.extend(dtype_problems(name, rule, infos))
        return None
    return infos


def _expert_slab(
    name: str, key: str, stacked: tuple[int, int], info: TensorInfo, rule: WeightRule, problems: list[str]
) -> TensorInfo | None:
    """Expert e's slab (``stacked = (e, n)``) of a tensor stacking all n experts along dim 0:
    contiguous in the file (row-major), so it is read as a tensor of its own at a later offset."""
    e, n = stacked
    if len(info.shape) < 2 or info.shape[0] != n:
        if e == 0:
            problems.append(
                f"`{key}` ({info.file}) for `{name}` has no `{{e}}` in its key, so it must stack all {n} "
                f"experts along dim 0; found shape {list(info.shape)} (rule {rule.location})"
            )
        return None
    slab = TensorInfo(info.key, info.file, info.dtype, info.shape[1:], 0)
    return TensorInfo(info.key, info.file, info.dtype, info.shape[1:], info.offset + e * slab.nbytes)


def _at_expert(e: int | None, reads: list[Read]) -> list[Read]:
    """Place one expert's reads at index `e` of the stacked parameter's leading dim."""
    if e is None:
        return reads
    return [Read(r.key, r.file, r.offset, r.shape, r.dtype, r.src, ((e, e + 1), *r.dst), r.transpose) for r in reads]


def _unconsumed(spec: LoadedSpec, ckpt: CheckpointIndex, consumed: set[str]) -> list[str]:
    ignored = ignore_regexes(spec)
    where = spec.where(("weights",), key=True)
    return [
        f"unexpected tensor `{key}` {info.dtype} {list(info.shape)} in {info.file}: expected every "
        f"checkpoint tensor to be read by a weight rule or matched by weights.ignore "
        f"({where.file}:{where.line}), found neither"
        for key, info in sorted(ckpt.tensors.items())
        if key not in consumed and not any(rx.match(key) for rx in ignored)
    ]


def _reads(
    decl: ParamDecl, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]], tp: int, rank: int
) -> list[Read]:
    """This rank's reads: the rank's ranges of the full tensor, intersected with each source part."""
    full = decl.shape
    if not full:  # a scalar: one whole read
        s, info = infos[0]
        return [Read(s.key, info.file, info.offset, info.shape, info.dtype, (), (), False)]
    cdim = rule.dim
    if isinstance(decl.role, Replicated):
        sdim, pieces = cdim, [(0, full[cdim])]
    else:
        sdim, pieces = decl.role.dim, decl.rank_pieces(tp, rank)
    reads: list[Read] = []
    local_off = 0
    for a, b in pieces:
        real_b = min(b, full[sdim])
        src_off = 0
        for s, info in infos:
            shape = source_shape(info, s.transpose)
            n = shape[cdim]
            src: list[Range] = [(0, x) for x in shape]
            dst: list[Range] = [(0, x) for x in decl.local_shape(tp)]
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
    return _merge(reads)


def _merge(reads: list[Read]) -> list[Read]:
    """Join neighbouring reads that continue each other in the source and in the destination.

    (A fused tensor read whole at tp=1 becomes one read, not one per segment.)
    """
    out: list[Read] = []
    for r in reads:
        prev = out[-1] if out else None
        if prev is not None and prev.key == r.key and prev.transpose == r.transpose and r.src and r.dst:
            ds = [k for k, (x, y) in enumerate(zip(prev.src, r.src, strict=True)) if x != y]
            dd = [k for k, (x, y) in enumerate(zip(prev.dst, r.dst, strict=True)) if x != y]
            if (
                len(ds) == 1
                and len(dd) == 1
                and prev.src[ds[0]][1] == r.src[ds[0]][0]
                and prev.dst[dd[0]][1] == r.dst[dd[0]][0]
            ):
                src = list(prev.src)
                src[ds[0]] = (prev.src[ds[0]][0], r.src[ds[0]][1])
                dst = list(prev.dst)
                dst[dd[0]] = (prev.dst[dd[0]][0], r.dst[dd[0]][1])
                out[-1] = Read(r.key, r.file, r.offset, r.shape, r.dtype, tuple(src), tuple(dst), r.transpose)
                continue
        out.append(r)
    return out


def _read(s: SourceRef, info: TensorInfo, src: list[Range], dst: list[Range]) -> Read:
    stored = tuple(reversed(src)) if s.transpose else tuple(src)
    return Read(s.key, info.file, info.offset, info.shape, info.dtype, stored, tuple(dst), s.transpose)
