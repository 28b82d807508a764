"""Launcher for the Triton KV-cache store kernel (see kv_store_jit.py)."""

from __future__ import annotations

import torch

from minisgl_kernels._util import next_pow2
from minisgl_kernels.kv_store_jit import store_kv_kernel


def store_kv_triton(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    heads_pad, block_d = next_pow2(num_kv_heads), next_pow2(head_dim)
    store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        NUM_KV_HEADS=num_kv_heads,
        HEADS_PAD=heads_pad,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        num_warps=4 if heads_pad * block_d <= 2048 else 8,
    )
