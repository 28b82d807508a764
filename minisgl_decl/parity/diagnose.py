"""On a failed check: the first of our modules whose output diverges from transformers'.

The failing check's input is replayed with every paired module recorded (`capture.py`) on
our model and on transformers' (float32, and float64 for the noise floor); modules are
compared in the order ours ran them. A module diverges when its max |Δ| is above both
`multiple` x the reference's own float32 noise at that module (|fp32 - fp64|) and
`REL_MIN` x the module's largest output (so rounding never counts). Divergence found
upstream propagates: the first diverging module is where to look.

Our side runs the same forwards on every rank (tensor parallelism needs all of them);
the comparison needs the reference and happens where it is loaded (rank 0). Module
outputs that are rank-local shards (their shape differs from transformers') are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..runtime.model import CompiledModel
from ..runtime.runner import ModelRunner
from .capture import recording
from .check import DECODE_START, DECODE_STEPS, EXTEND, PREFIX, Inputs, check_names
from .hf_reference import as_float64
from .modmap import ModuleMap, ModulePair

REL_MIN = 1e-5


@dataclass(frozen=True)
class Scenario:
    """One traced forward of ours (after `setup`) and the sequences transformers runs for it."""

    name: str
    setup: Callable[[ModelRunner], object]
    step: Callable[[ModelRunner], object]
    requests: tuple[tuple[list[int], int], ...]  # per request, batch order: ids, rows compared (the last)


def scenarios(inputs: Inputs, check: int) -> list[Scenario]:
    """The forwards that replay check number `check` (see `check.run_parity_checks`)."""
    seq, name = inputs.seq, check_names(inputs)[check]
    if check == 0:
        return [Scenario(name, lambda r: None, lambda r: r.extend({0: seq}, all_logits=True), ((seq, len(seq)),))]
    if check == 1:
        reqs = tuple((t, len(t)) for t in inputs.batch.values())
        return [Scenario(name, lambda r: None, lambda r: r.extend(inputs.batch, all_logits=True), reqs)]
    if check == 2:
        return [
            Scenario(
                name,
                lambda r: r.extend({0: seq[:PREFIX]}),
                lambda r: r.extend({0: seq[PREFIX : PREFIX + EXTEND]}, all_logits=True),
                ((seq[: PREFIX + EXTEND], EXTEND),),
            )
        ]
    a, b = seq, inputs.other
    sa, sb = DECODE_START

    def setup(t: int) -> Callable[[ModelRunner], object]:
        def run(r: ModelRunner) -> None:
            r.extend({0: a[:sa], 1: b[:sb]})
            for s in range(t):
                r.decode({0: a[sa + s], 1: b[sb + s]})

        return run

    return [
        Scenario(
            f"decode step {t}",
            setup(t),
            lambda r, t=t: r.decode({0: a[sa + t], 1: b[sb + t]}),
            ((a[: sa + t + 1], 1), (b[: sb + t + 1], 1)),
        )
        for t in range(DECODE_STEPS)
    ]


@dataclass(frozen=True)
class ModuleDiff:
    ours: str
    hf: str
    layer: int | None
    max_abs_diff: float
    relative: float  # max |Δ| / max |transformers' output|
    noise_floor: float  # max |transformers fp32 - fp64| at this module
    nonfinite: str | None = None  # "ours", "transformers'" or "both": whose output holds NaN/Inf


@dataclass(frozen=True)
class Diagnosis:
    check: str  # the failed check whose input was replayed
    input: str  # the forward in which the divergence was found (or the last one tried)
    first: ModuleDiff | None  # the first diverging module; None: every compared module agrees
    last_agreeing: ModuleDiff | None
    unpaired_between: tuple[str, ...]  # ours without a transformers module, run between the two
    compared: int
    multiple: float

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A short human report."""
        if self.first is None:
            return [
                f"diagnosis ({self.input}): all {self.compared} paired module outputs agree with transformers; "
                "the difference comes from what no paired module computes"
                + (f" (not paired: {', '.join(self.unpaired_between)})" if self.unpaired_between else "")
            ]
        f = self.first
        where = f"layer {f.layer}" if f.layer is not None else "outside the layer stack"
        size = (
            f"  non-finite output ({'on both sides' if f.nonfinite == 'both' else f.nonfinite + ' only'})"
            if f.nonfinite is not None
            else f"  max|Δ| = {f.max_abs_diff:.3e}, relative {f.relative:.2e} "
            f"(transformers' own noise there {f.noise_floor:.1e}, allowed {self.multiple:g}x)"
        )
        out = [f"first divergence, {where}: ours `{f.ours}` <-> transformers `{f.hf}` (on {self.input})", size]
        if self.last_agreeing is not None:
            a = self.last_agreeing
            out.append(f"  last agreeing: `{a.ours}` <-> `{a.hf}` (max|Δ| {a.max_abs_diff:.1e})")
        if self.unpaired_between:
            out.append(f"  also ran in between, with no transformers counterpart: {', '.join(self.unpaired_between)}")
        return out


def _rows(t: torch.Tensor, total: int, keep: int) -> torch.Tensor | None:
    """The last `keep` token rows of a per-token output of a `total`-token forward, as [keep, -1]."""
    if t.dim() >= 2 and t.shape[0] == 1 and t.shape[1] == total:
        t = t[0]
    if t.dim() == 0 or t.shape[0] != total:
        return None
    return t[total - keep :].reshape(keep, -1).double().cpu()


def _record_hf(
    hf: nn.Module, names: list[str], requests: tuple[tuple[list[int], int], ...], device: str | torch.device
) -> dict[str, list[torch.Tensor | None]]:
    """Per transformers module, per call: the compared rows of every request, concatenated."""
    modules = dict(hf.named_modules())
    per_request = []
    for ids, keep in requests:
        with recording({n: modules[n] for n in names}) as rec, torch.inference_mode():
            hf(torch.tensor([ids], device=device), use_cache=False)
        per_request.append({n: [_rows(t, len(ids), keep) for t in calls] for n, calls in rec.calls.items()})
    out: dict[str, list[torch.Tensor | None]] = {}
    for n in names:
        counts = {len(r.get(n, [])) for r in per_request}
        if len(counts) != 1:
            continue
        calls = []
        for k in range(counts.pop()):
            parts = [r[n][k] for r in per_request]
            calls.append(None if any(p is None for p in parts) else torch.cat(parts))  # type: ignore[arg-type]
        out[n] = calls
    return out


def _compare(
    pair: ModulePair, ours: list[torch.Tensor], ref: list[torch.Tensor | None], ref64: list[torch.Tensor | None]
) -> ModuleDiff | None:
    if not ours or len(ours) != len(ref) or len(ref) != len(ref64):
        return None
    diff = scale = floor = 0.0
    bad_ours = bad_ref = False
    for o, r, r64 in zip(ours, ref, ref64, strict=True):
        if r is None or r64 is None or o.numel() != r.numel() or o.shape[0] != r.shape[0]:
            return None
        o = o.reshape(r.shape).double().cpu()
        bad_ours |= not bool(torch.isfinite(o).all())
        bad_ref |= not bool(torch.isfinite(r).all())
        if bad_ours or bad_ref:
            continue
        diff = max(diff, float((o - r).abs().max()))
        scale = max(scale, float(r.abs().max()))
        floor = max(floor, float((r64 - r).abs().max()))
    if bad_ours or bad_ref:
        who = "both" if bad_ours and bad_ref else "ours" if bad_ours else "transformers'"
        return ModuleDiff(pair.ours, pair.hf, pair.layer, math.nan, math.nan, math.nan, who)
    return ModuleDiff(pair.ours, pair.hf, pair.layer, diff, diff / scale if scale > 0 else diff, floor)


def _diverges(d: ModuleDiff, multiple: float) -> bool:
    if d.nonfinite is not None:
        return True
    return d.max_abs_diff > multiple * d.noise_floor and d.relative > REL_MIN


def diagnose(
    model: CompiledModel,
    new_runner: Callable[[], ModelRunner],
    mmap: ModuleMap,
    replay: list[Scenario],
    check: str,
    hf: nn.Module | None,
    multiple: float,
    device: str | torch.device = "cpu",
) -> Diagnosis | None:
    """Replay `replay` on ours (every rank) and compare with transformers' `hf` where given
    (float32, and float64 in place for the floor); None on ranks without the reference.
    Where the model cannot run in float64 the floor is 0 and only `REL_MIN` separates
    rounding from divergence."""
    ours_modules = {p.ours: model.module(p.ours) for p in mmap.pairs}
    ours_modules.update({u: model.module(u) for u in mmap.unpaired})
    recorded = []
    for sc in replay:
        runner = new_runner()
        sc.setup(runner)
        with recording(ours_modules, fused=True) as rec, torch.inference_mode():
            sc.step(runner)
        recorded.append((sc, rec.calls))
    if hf is None:
        return None
    by_ours = {p.ours: p for p in mmap.pairs}
    names = [p.hf for p in mmap.pairs]
    result = Diagnosis(check, replay[-1].name if replay else check, None, None, (), 0, multiple)
    for sc, calls in recorded:
        ref = _record_hf(hf, names, sc.requests, device)
        with as_float64(hf, device) as hf64:
            ref64 = _record_hf(hf64, names, sc.requests, device) if hf64 is not None else ref
        last: ModuleDiff | None = None
        between: list[str] = []
        compared = 0
        for name, outs in calls.items():
            pair = by_ours.get(name)
            if pair is None:
                between.append(name)
                continue
            d = _compare(pair, outs, ref.get(pair.hf, []), ref64.get(pair.hf, []))
            if d is None:
                between.append(name)
                continue
            compared += 1
            if _diverges(d, multiple):
                return Diagnosis(check, sc.name, d, last, tuple(between), compared, multiple)
            last, between = d, []
        result = Diagnosis(check, sc.name, None, last, tuple(between), compared, multiple)
    return result
