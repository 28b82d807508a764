"""Launcher for the fused activation-and-multiply kernel (see act_jit.py)."""

from __future__ import annotations

import torch

from minisgl_kernels._util import cdiv, next_pow2
from minisgl_kernels.act_jit import act_and_mul_kernel


def act_and_mul_triton(x: torch.Tensor, act: str, out: torch.Tensor) -> None:
    """``out [T, F] = act(x[:, :F]) * x[:, F:]`` for ``x [T, 2F]`` (row views)."""
    rows, ffn = out.shape
    if rows == 0 or ffn == 0:
        return
    block = min(1024, next_pow2(ffn))
    act_and_mul_kernel[(rows, cdiv(ffn, block))](
        x,
        out,
        x.stride(0),
        out.stride(0),
        ffn,
        ACT=act,
        BLOCK=block,
        num_warps=4,
    )
