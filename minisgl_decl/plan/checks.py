"""Header-only checks of one parameter's sources: dtype, rank, and shape of every part.

Every message names the checkpoint tensor, the spec rule (file:line) and what was
expected against what was found, so one report says everything that is wrong.
"""

from __future__ import annotations

from ..catalogue.params import ParamDecl, Sharded
from ..spec.rules import SourceRef, WeightRule
from .checkpoint import TensorInfo

FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def source_shape(info: TensorInfo, transpose: bool) -> tuple[int, ...]:
    return tuple(reversed(info.shape)) if transpose else info.shape


def part_sizes(decl: ParamDecl, rule: WeightRule) -> list[int] | None:
    """Expected size along the concat dim of each source, when the parameter's role tells it."""
    n = len(rule.sources)
    if not decl.shape or rule.dim >= len(decl.shape):
        return None
    if n == 1:
        return [decl.shape[rule.dim]]
    role = decl.role
    if isinstance(role, Sharded) and role.dim == rule.dim and len(role.segments) == n:
        return [s.size for s in role.segments]
    return None


def _segments_text(decl: ParamDecl) -> str:
    role = decl.role
    if not isinstance(role, Sharded) or len(role.segments) < 2:
        return ""
    parts = " | ".join(f"{s.name} ({s.units} x {s.unit_size})" for s in role.segments)
    return f" = {parts}"


def expected_part_shape(decl: ParamDecl, rule: WeightRule, index: int) -> str:
    sizes = part_sizes(decl, rule)
    shape: list[int | str] = list(decl.shape)
    if shape and rule.dim < len(shape):
        shape[rule.dim] = sizes[index] if sizes is not None else "*"
    return str(shape).replace("'", "")


def dtype_problems(name: str, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]]) -> list[str]:
    return [
        f"wrong dtype for `{s.key}` ({info.file}): expected a floating type ({', '.join(FLOAT_DTYPES)}) "
        f"for `{name}`, found {info.dtype} (rule {rule.location})"
        for s, info in infos
        if info.dtype not in FLOAT_DTYPES
    ]


def check_sources(name: str, decl: ParamDecl, rule: WeightRule, infos: list[tuple[SourceRef, TensorInfo]]) -> list[str]:
    """Problems with all the sources of parameter `name`; empty when they build it exactly."""
    problems = dtype_problems(name, rule, infos)
    full, d, where = decl.shape, rule.dim, f"rule {rule.location}"
    for s, info in infos:
        if s.transpose and len(info.shape) != 2:
            problems.append(
                f"`{s.key}` is marked `transpose` but has shape {list(info.shape)}; "
                f"only 2-d tensors can be transposed ({where})"
            )
            return problems
    shapes = [source_shape(info, s.transpose) for s, info in infos]
    if any(len(sh) != len(full) for sh in shapes) or (full and d >= len(full)):
        for (s, info), sh in zip(infos, shapes, strict=True):
            if len(sh) != len(full):
                want = expected_part_shape(decl, rule, 0)
                problems.append(
                    f"wrong shape for `{s.key}` ({info.file}): expected a {len(full)}-d tensor "
                    f"{want} for `{name}`, found {list(info.shape)} ({where})"
                )
        if full and d >= len(full):
            problems.append(f"`{name}` has {len(full)} dims; rule dim {d} is out of range ({where})")
        return problems
    sizes = part_sizes(decl, rule)
    fused = len(infos) == 1 and len(_segments_text(decl)) > 0
    for k, ((s, info), sh) in enumerate(zip(infos, shapes, strict=True)):
        other_ok = all(a == b for j, (a, b) in enumerate(zip(sh, full, strict=True)) if j != d)
        size_ok = sizes is None or sh[d] == sizes[k]
        if other_ok and size_ok:
            continue
        shown = list(info.shape) if not s.transpose else f"{list(info.shape)} (transposed {list(sh)})"
        if fused and other_ok:
            problems.append(
                f"fused tensor `{s.key}` ({info.file}) does not split evenly into `{name}`: expected "
                f"{full[d]} along dim {d}{_segments_text(decl)}, found {sh[d]} (shape {shown}) ({where})"
            )
        else:
            want = expected_part_shape(decl, rule, k)
            problems.append(
                f"wrong shape for `{s.key}` ({info.file}): expected {want}"
                f" (part {k + 1} of {len(infos)} of `{name}` {list(full)} along dim {d}), "
                f"found {shown} ({where})"
            )
    if problems or not full:
        return problems
    total = sum(sh[d] for sh in shapes)
    if total != full[d]:
        parts = " + ".join(str(sh[d]) for sh in shapes)
        problems.append(
            f"wrong shape for `{name}`: its sources along dim {d} add up to {parts} = {total}, "
            f"expected {full[d]}{_segments_text(decl)} ({where})"
        )
    return problems
