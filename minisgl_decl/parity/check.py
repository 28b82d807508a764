"""The parity check: our compiled model vs transformers on the same token ids, float32.

Checks full prefill, a variable-length batch, prefix + extend through the paged KV
cache, and token-by-token decode of two interleaved requests. A NaN or Inf anywhere in
either model's logits is a FAIL that names the check, the side, the token and the
vocabulary id.

The verdict is relative to the reference's own float32 noise: where a float64 copy of
the reference is given, each check also measures the noise floor, max |transformers
float32 - transformers float64| over the same logits. A check passes when our max
|Δlogit| is within `tolerance` (absolute) OR within `multiple` x its floor: a real model
whose float32 summation order differs from transformers' (other GEMM shapes when
batching, TP all-reduce) is not failed for rounding the reference itself does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..runtime.runner import ModelRunner

DEFAULT_TOLERANCE = 1e-4
#: our max |Δlogit| may be this many times transformers' own float32 noise (vs float64).
#: Two correct float32 implementations differ by about the sum of their rounding errors
#: and a different summation order can double an error bound; 10x leaves room for that
#: while a wrong spec (≥1e-3 relative on logits) stays orders of magnitude above.
DEFAULT_NOISE_MULTIPLE = 10.0

Reference = Callable[[list[int]], torch.Tensor]


@dataclass(frozen=True)
class CheckResult:
    name: str
    max_abs_diff: float  # NaN when a side has non-finite logits
    nonfinite: str | None = None  # where the first NaN/Inf was seen
    noise_floor: float | None = None  # max |ref fp32 - ref fp64| over the same logits; None: not measured


@dataclass(frozen=True)
class Inputs:
    """The token ids of the four checks (drawn once from `seed`)."""

    seq: list[int]  # 23 tokens: prefill, prefix + extend, decode request 0
    batch: dict[int, list[int]]  # lengths 1, 7, 16
    other: list[int]  # 20 tokens: decode request 1

    @staticmethod
    def draw(vocab: int, seed: int) -> Inputs:
        g = torch.Generator().manual_seed(seed)

        def ids(n: int) -> list[int]:
            return torch.randint(0, vocab, (n,), generator=g).tolist()

        seq = ids(23)
        batch = {0: ids(1), 1: ids(7), 2: ids(16)}
        return Inputs(seq, batch, ids(20))

    def sequences(self) -> list[list[int]]:
        """Every sequence the checks ask transformers for."""
        return [self.seq, *self.batch.values(), self.other]


PREFIX, EXTEND = 9, 10  # cached prefix + extend check
DECODE_START = (4, 9)  # prompt lengths of the two decode requests
DECODE_STEPS = 11


def check_names(inputs: Inputs) -> list[str]:
    lengths = ", ".join(str(len(t)) for t in inputs.batch.values())
    return [
        f"prefill (1 x {len(inputs.seq)} tokens)",
        f"varlen prefill batch (lengths {lengths})",
        f"cached prefix {PREFIX} + extend {EXTEND}",
        f"decode {DECODE_STEPS} steps x 2 requests (paged KV cache)",
    ]


def _first_nonfinite(t: torch.Tensor, side: str, where: str) -> str | None:
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    pos = [int(i) for i in bad.nonzero()[0].tolist()]
    value = float(t[tuple(pos)])
    token = f"token {pos[0]}, " if t.dim() > 1 else ""
    return (
        f"{side} logits hold {int(bad.sum())} non-finite value(s); first {value} at {where}: {token}vocab id {pos[-1]}"
    )


class _Ref:
    """transformers' logits for one sequence, float32, with the float64 logits when measured."""

    def __init__(self, f32: torch.Tensor, f64: torch.Tensor | None) -> None:
        self.f32, self.f64 = f32, f64

    def __getitem__(self, index: int | slice) -> _Ref:
        return _Ref(self.f32[index], None if self.f64 is None else self.f64[index])


class _Worst:
    """The largest difference (and floor) seen, where NaN (non-finite logits) beats every number."""

    def __init__(self) -> None:
        self.value = 0.0
        self.floor: float | None = None
        self.problem: str | None = None

    def add(self, got: torch.Tensor, ref: _Ref, where: str) -> None:
        if self.problem is not None:
            return
        a, b = got.float().cpu(), ref.f32.float().cpu()
        problem = _first_nonfinite(a, "our", where) or _first_nonfinite(b, "transformers'", where)
        if problem is not None:
            self.value, self.problem = math.nan, problem
            return
        diff = float((a - b).abs().max())
        if math.isnan(diff):
            self.value, self.problem = math.nan, "non-finite difference"
            return
        self.value = max(self.value, diff)
        if ref.f64 is not None:
            floor = float((ref.f64.cpu() - b.double()).abs().max())
            self.floor = floor if self.floor is None else max(self.floor, floor)

    def result(self, name: str) -> CheckResult:
        return CheckResult(name, self.value, self.problem, None if self.problem else self.floor)


def run_parity_checks(
    new_runner: Callable[[], ModelRunner],
    reference: Reference,
    vocab: int,
    seed: int = 0,
    reference64: Reference | None = None,
) -> list[CheckResult]:
    """`reference(ids)` returns transformers' logits [len(ids), vocab] for one sequence;
    `reference64(ids)` (optional) the same from a float64 copy: the noise floor."""
    inputs = Inputs.draw(vocab, seed)
    names = check_names(inputs)

    def ref(ids: list[int]) -> _Ref:
        return _Ref(reference(ids), None if reference64 is None else reference64(ids))

    results = []
    seq = inputs.seq
    ref_a = ref(seq)
    w = _Worst()
    w.add(new_runner().extend({0: seq}, all_logits=True)[0], ref_a, names[0])
    results.append(w.result(names[0]))

    outs = new_runner().extend(inputs.batch, all_logits=True)
    w = _Worst()
    for k, (o, t) in enumerate(zip(outs, inputs.batch.values(), strict=True)):
        w.add(o, ref(t), f"varlen batch request {k}")
    results.append(w.result(names[1]))

    runner = new_runner()
    runner.extend({0: seq[:PREFIX]})
    ext = runner.extend({0: seq[PREFIX : PREFIX + EXTEND]}, all_logits=True)[0]
    w = _Worst()
    w.add(ext, ref_a[PREFIX : PREFIX + EXTEND], names[2])
    results.append(w.result(names[2]))

    a, b = seq, inputs.other
    ref_b = ref(b)
    (sa, sb) = DECODE_START
    runner = new_runner()
    runner.extend({0: a[:sa], 1: b[:sb]})
    w = _Worst()
    for t in range(DECODE_STEPS):
        out = runner.decode({0: a[sa + t], 1: b[sb + t]})
        w.add(out[0], ref_a[sa + t], f"decode step {t}, request 0")
        w.add(out[1], ref_b[sb + t], f"decode step {t}, request 1")
    results.append(w.result(names[3]))
    return results


def hf_reference_fn(hf_model: object, device: str | torch.device = "cpu") -> Reference:
    """transformers' logits for one sequence, on the CPU in the model's dtype as float (float64 stays)."""

    @torch.inference_mode()
    def reference(ids: list[int]) -> torch.Tensor:
        out = hf_model(torch.tensor([ids], device=device), use_cache=False)  # type: ignore[operator]
        logits = out.logits[0]
        return (logits if logits.dtype == torch.float64 else logits.float()).cpu()

    return reference


def allowed(result: CheckResult, tolerance: float, multiple: float) -> float:
    """The largest |Δlogit| this check may have: the tolerance, or `multiple` x its noise floor."""
    floor = result.noise_floor
    return tolerance if floor is None else max(tolerance, multiple * floor)


def check_passes(result: CheckResult, tolerance: float, multiple: float) -> bool:
    if result.nonfinite is not None or not math.isfinite(result.max_abs_diff):
        return False
    return result.max_abs_diff <= allowed(result, tolerance, multiple)


def verdict(
    results: list[CheckResult], tolerance: float = DEFAULT_TOLERANCE, multiple: float = DEFAULT_NOISE_MULTIPLE
) -> tuple[bool, float]:
    """(pass, worst difference): every check within its bound (see `allowed`); any non-finite
    logit or difference fails and makes `worst` NaN."""
    worst = 0.0
    for r in results:
        if r.nonfinite is not None or not math.isfinite(r.max_abs_diff):
            return False, math.nan
        worst = max(worst, r.max_abs_diff)
    return all(check_passes(r, tolerance, multiple) for r in results), worst


def first_failing(results: list[CheckResult], tolerance: float, multiple: float) -> int | None:
    """Index of the first check outside its bound (the one to diagnose), or None."""
    return next((k for k, r in enumerate(results) if not check_passes(r, tolerance, multiple)), None)
