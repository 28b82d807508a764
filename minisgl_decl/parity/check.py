"""The parity check: our compiled model vs transformers on the same token ids, float32.

Checks full prefill, a variable-length batch, prefix + extend through the paged KV
cache, and token-by-token decode of two interleaved requests. The verdict is the
largest |Δlogit| over all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..runtime.runner import ModelRunner

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class CheckResult:
    name: str
    max_abs_diff: float


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


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
    results.append(CheckResult(f"prefill (1 x {len(seq)} tokens)", _diff(got, ref)))

    batch = {0: ids(1), 1: ids(7), 2: ids(16)}
    outs = new_runner().extend(batch, all_logits=True)
    worst = max(_diff(o, reference(t)) for o, t in zip(outs, batch.values(), strict=True))
    results.append(CheckResult("varlen prefill batch (lengths 1, 7, 16)", worst))

    runner = new_runner()
    runner.extend({0: seq[:9]})
    ext = runner.extend({0: seq[9:19]}, all_logits=True)[0]
    results.append(CheckResult("cached prefix 9 + extend 10", _diff(ext, ref[9:19])))

    a, b = seq, ids(20)
    ref_b = reference(b)
    runner = new_runner()
    runner.extend({0: a[:4], 1: b[:9]})
    worst = 0.0
    steps = 0
    for t in range(11):
        out = runner.decode({0: a[4 + t], 1: b[9 + t]})
        worst = max(worst, _diff(out[0], ref[4 + t]), _diff(out[1], ref_b[9 + t]))
        steps += 1
    results.append(CheckResult(f"decode {steps} steps x 2 requests (paged KV cache)", worst))
    return results


def hf_reference_fn(hf_model: object, device: str | torch.device = "cpu") -> Callable[[list[int]], torch.Tensor]:
    @torch.inference_mode()
    def reference(ids: list[int]) -> torch.Tensor:
        out = hf_model(torch.tensor([ids], device=device), use_cache=False)  # type: ignore[operator]
        return out.logits[0].float().cpu()

    return reference


def verdict(results: list[CheckResult], tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, float]:
    worst = max(r.max_abs_diff for r in results)
    return worst <= tolerance and worst == worst, worst
