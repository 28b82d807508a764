"""The loader plan for people: per rank, what each parameter reads and what is done to it."""

from __future__ import annotations

from .model import LoadPlan, ParamPlan, Read


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _ranges(r: Read) -> str:
    parts = [":" if rng == (0, n) else f"{rng[0]}:{rng[1]}" for rng, n in zip(r.src, r.shape, strict=True)]
    return "[" + ", ".join(parts) + "]"


def _ops(p: ParamPlan, dtype: str) -> str:
    shown = []
    for op in p.ops(dtype):
        kind = op["op"]
        if kind in ("rename", "slice", "concat"):
            continue  # the reads say it
        if kind == "cast":
            shown.append(f"cast {op['from']}->{op['to']}")
        elif kind == "add":
            shown.append(f"+{op['value']:g}")
        elif kind == "split":
            shown.append(f"split into {op['pieces']} pieces")
        elif kind == "pad":
            shown.append("zero pad")
        else:
            shown.append(kind)
    return f"  [{', '.join(shown)}]" if shown else ""


def describe_plan(plan: LoadPlan) -> list[str]:
    out = [f"== loader plan ({plan.checkpoint}, tp={plan.tp}, loaded as {plan.dtype}) =="]
    out += [f"  warning: {w}" for w in plan.warnings]
    for rank in plan.ranks:
        files = sorted({r.file for p in rank.params for r in p.reads})
        out.append(
            f"  rank {rank.rank}: {len(rank.params)} parameters, reads {_mib(rank.nbytes)} from {len(files)} file(s)"
        )
        for p in rank.params:
            reads = " ++ ".join(f"{r.key}{_ranges(r)}" + ("^T" if r.transpose else "") for r in p.reads)
            shape = "x".join(map(str, p.shape)) or "scalar"
            out.append(f"    {p.name} [{shape}] {p.role} <- {reads}{_ops(p, plan.dtype)}")
    return out
