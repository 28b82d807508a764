"""The copy-bandwidth ceiling the GPU benchmarks compare against (one definition for all of them)."""

from __future__ import annotations

import torch
import triton


def copy_tbps(device: str = "cuda") -> float:
    """TB/s of a 1 GiB bf16 device-to-device copy (bytes read + written), median of triton's do_bench."""
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)

    ms = float(triton.testing.do_bench(copy, warmup=25, rep=200, return_mode="median"))
    return 2 * (1 << 30) / (ms * 1e-3) / 1e12
