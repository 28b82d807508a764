"""The parity check: our compiled model vs transformers on the same token ids, float32.

Checks full prefill, a variable-length batch, prefix + extend through the paged KV
cache, and token-by-token decode of two interleaved requests. The verdict is the
largest |Δlogit| over all of them; a NaN or Inf anywhere in either model's logits is a
FAIL that names the check, the side, the token and the vocabulary id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..runtime.runner import ModelRunner

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CheckResult:
    name: str
    max_abs_diff: float  # NaN when a side has non-finite logits
    nonfinite: str | None = None  # where the first NaN/Inf was seen


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


def _diff(got: torch.Tensor, ref: torch.Tensor, where: str) -> tuple[float, str | None]:
    """(max |got - ref|, None), or (NaN, where the first non-finite logit is) if either side has one."""
    a, b = got.float().cpu(), ref.float().cpu()
    problem = _first_nonfinite(a, "our", where) or _first_nonfinite(b, "transformers'", where)
    if problem is not None:
        return math.nan, problem
    return float((a - b).abs().max()), None


class _Worst:
    """The largest difference seen, where NaN (non-finite logits) beats every number."""

    def __init__(self) -> None:
        self.value = 0.0
        self.problem: str | None = None

    def add(self, diff_problem: tuple[float, str | None]) -> None:
        diff, problem = diff_problem
        if self.problem is not None:
            return
        if problem is not None or math.isnan(diff):
            self.value, self.problem = math.nan, problem or "non-finite difference"
        else:
            self.value = max(self.value, diff)

    def result(self, name: str) -> CheckResult:
        return CheckResult(name, self.value, self.problem)


def _one(name: str, got: torch.Tensor, ref: torch.Tensor) -> CheckResult:
    w = _Worst()
    w.add(_diff(got, ref, name))
    return w.result(name)


def run_parity_checks(
    new_runner: Callable[[], ModelRunner],
    reference: Callable[[list[int]], torch.Tensor],
    vocab: int,
    seed: int = 0,
) -> list[CheckResult]:
    """`reference(ids)` returns transformers' logits [len(ids), vocab] for one sequence."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    results = []
    seq = ids(23)
    ref = reference(seq)
    got = new_runner().extend({0: seq}, all_logits=True)[0]
    results.append(_one(f"prefill (1 x {len(seq)} tokens)", got, ref))

    batch = {0: ids(1), 1: ids(7), 2: ids(16)}
    outs = new_runner().extend(batch, all_logits=True)
    worst = _Worst()
    for k, (o, t) in enumerate(zip(outs, batch.values(), strict=True)):
        worst.add(_diff(o, reference(t), f"varlen batch request {k}"))
    results.append(worst.result("varlen prefill batch (lengths 1, 7, 16)"))

    runner = new_runner()
    runner.extend({0: seq[:9]})
    ext = runner.extend({0: seq[9:19]}, all_logits=True)[0]
    results.append(_one("cached prefix 9 + extend 10", ext, ref[9:19]))

    a, b = seq, ids(20)
    ref_b = reference(b)
    runner = new_runner()
    runner.extend({0: a[:4], 1: b[:9]})
    worst = _Worst()
    steps = 0
    for t in range(11):
        out = runner.decode({0: a[4 + t], 1: b[9 + t]})
        worst.add(_diff(out[0], ref[4 + t], f"decode step {t}, request 0"))
        worst.add(_diff(out[1], ref_b[9 + t], f"decode step {t}, request 1"))
        steps += 1
    results.append(worst.result(f"decode {steps} steps x 2 requests (paged KV cache)"))
    return results


def hf_reference_fn(hf_model: object, device: str | torch.device = "cpu") -> Callable[[list[int]], torch.Tensor]:
    @torch.inference_mode()
    def reference(ids: list[int]) -> torch.Tensor:
        out = hf_model(torch.tensor([ids], device=device), use_cache=False)  # type: ignore[operator]
        return out.logits[0].float().cpu()

    return reference


def verdict(results: list[CheckResult], tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, float]:
    """(pass, worst difference): any non-finite logit or difference fails, and makes `worst` NaN."""
    worst = 0.0
    for r in results:
        if r.nonfinite is not None or not math.isfinite(r.max_abs_diff):
            return False, math.nan
        worst = max(worst, r.max_abs_diff)
    return worst <= tolerance, worst
