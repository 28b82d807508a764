"""Re-layout of a source's rows (`layout:` on a weight source): several strided reads, still
only this rank's bytes.

The plan first computes reads in *target order* along the rule's dim (as if the source
were already laid out like the parameter). A source with a layout stores that dim as
`split` (outermost first); target axis j is source axis `order[j]`. Each read's range in
target order is cut into runs that are contiguous in the source too, one `Read` each: a
rank holding q heads 2..3 of a per-head fused qkv reads two head_dim-row blocks, not the
whole tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import prod
from typing import Any

from ..spec.expr import ExprError, parse_expr
from .checkpoint import TensorInfo
from .model import Read
from .rules import Layout, SourceRef, WeightRule


def layout_sizes(layout: Layout, config: Mapping[str, Any]) -> tuple[int, ...]:
    """The split sizes with config expressions evaluated (ValueError when not positive ints)."""
    sizes = []
    for v in layout.split:
        try:
            n = parse_expr(v).evaluate(dict(config)) if isinstance(v, str) else v
        except ExprError as exc:
            raise ValueError(f"layout split `{v}`: {exc.message}") from None
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"layout split `{v}` must be a positive integer, got {n!r}")
        sizes.append(n)
    return tuple(sizes)


def layout_problems(
    name: str, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]], config: Mapping[str, Any]
) -> list[str]:
    problems = []
    for s, info in infos:
        if s.layout is None:
            continue
        where = f"`{s.key}` for `{name}` (rule {rule.location})"
        if sorted(s.layout.order) != list(range(len(s.layout.split))):
            problems.append(
                f"{where}: layout order {list(s.layout.order)} is not a permutation of "
                f"0..{len(s.layout.split) - 1} (one entry per split axis)"
            )
            continue
        try:
            sizes = layout_sizes(s.layout, config)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        shape = tuple(reversed(info.shape)) if s.transpose else info.shape  # as the parameter sees it
        if rule.dim >= len(shape) or prod(sizes) != shape[rule.dim]:
            have = shape[rule.dim] if rule.dim < len(shape) else "nothing"
            problems.append(
                f"{where}: layout split {list(sizes)} covers {prod(sizes)} along dim {rule.dim}, "
                f"the tensor has {have} (shape {list(info.shape)})"
            )
    return problems


def _source_index(t: int, sizes: tuple[int, ...], order: tuple[int, ...]) -> int:
    """Source position of target position `t` (target axes are source axes `order`)."""
    target_sizes = [sizes[a] for a in order]
    strides = [prod(sizes[a + 1 :]) for a in range(len(sizes))]
    s = 0
    for j in reversed(range(len(order))):
        t, digit = divmod(t, target_sizes[j])
        s += digit * strides[order[j]]
    return s


def _unit(sizes: tuple[int, ...], order: tuple[int, ...]) -> int:
    """Rows that stay together: the trailing axes the permutation leaves in place."""
    n = 1
    for j in reversed(range(len(order))):
        if order[j] != j:
            break
        n *= sizes[j]
    return n


def relayout(reads: list[Read], sources: list[SourceRef], dim: int, config: Mapping[str, Any]) -> list[Read]:
    """Reads in target order -> reads in the sources' stored order (runs contiguous in both)."""
    layouts = {s.key: s.layout for s in sources if s.layout is not None}
    if not layouts:
        return reads
    out: list[Read] = []
    for r in reads:
        layout = layouts.get(r.key)
        if layout is None or not r.src:
            out.append(r)
            continue
        sizes = layout_sizes(layout, config)
        unit = _unit(sizes, layout.order)
        axis = len(r.src) - 1 - dim if r.transpose else dim  # the stored axis of the rule's dim
        lo, hi = r.src[axis]
        dlo = r.dst[dim][0]
        t = lo
        while t < hi:
            start = _source_index(t, sizes, layout.order)
            n = min(unit - t % unit, hi - t)  # the rest of this unit, contiguous in the source
            while t + n < hi and _source_index(t + n, sizes, layout.order) == start + n:
                n += min(unit, hi - t - n)
            src = list(r.src)
            src[axis] = (start, start + n)
            dst = list(r.dst)
            dst[dim] = (dlo + t - lo, dlo + t - lo + n)
            out.append(Read(r.key, r.file, r.offset, r.shape, r.dtype, tuple(src), tuple(dst), r.transpose))
            t += n
    return out
