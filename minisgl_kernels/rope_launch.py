"""Launcher for the Triton rotary kernel (see rope_jit.py)."""

from __future__ import annotations

import torch

from minisgl_kernels._util import next_pow2
from minisgl_kernels.options import RopeOptions
from minisgl_kernels.rope_jit import rope_kernel


def rope_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    inv_freq: torch.Tensor,
    opts: RopeOptions,
) -> None:
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if num_tokens == 0:
        return
    half = inv_freq.shape[0]
    store, norm = opts.store, opts.norm
    vv = store.v if store is not None else k
    kc = store.k_cache if store is not None else k
    vc = store.v_cache if store is not None else k
    sl = store.slots if store is not None else positions
    elems = max(num_q_heads, num_kv_heads) * next_pow2(head_dim)
    rope_kernel[(num_tokens, 2)](
        q,
        k,
        vv,
        kc,
        vc,
        sl,
        positions,
        cos_sin,
        inv_freq,
        norm.q_weight if norm is not None else inv_freq,
        norm.k_weight if norm is not None else inv_freq,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        vv.stride(0),
        vv.stride(1),
        kc.stride(0),
        kc.stride(1),
        vc.stride(0),
        vc.stride(1),
        cos_sin.shape[0],
        float(opts.scaling),
        float(norm.eps) if norm is not None else 0.0,
        float(norm.offset) if norm is not None else 0.0,
        NUM_Q_HEADS=num_q_heads,
        NUM_KV_HEADS=num_kv_heads,
        Q_HEADS_PAD=next_pow2(num_q_heads),
        KV_HEADS_PAD=next_pow2(num_kv_heads),
        HALF=half,
        HALF_PAD=next_pow2(half),
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
        STORE=store is not None,
        NORM=norm is not None,
        CAST_BEFORE_WEIGHT=norm.cast_before_weight if norm is not None else True,
        num_warps=4 if elems <= 4096 else 8,
    )
