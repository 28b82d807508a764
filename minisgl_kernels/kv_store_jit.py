"""Triton kernel that scatters new tokens' K/V into the slot-addressed cache.

BLOCK_D is the head dim rounded up to a power of two (features past HEAD_DIM are masked).
Launcher: kv_store_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from minisgl_kernels.attention_jit import tile_mask


@triton.jit
def store_kv_kernel(
    K,
    V,
    KC,
    VC,
    SLOTS,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(SLOTS + t).to(tl.int64)
    if slot < 0:  # padding token: nothing to store
        return
    offs_h = tl.arange(0, HEADS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    mask = tile_mask(offs_h < NUM_KV_HEADS, offs_d, HEAD_DIM, BLOCK_D)
    k = tl.load(K + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(KC + slot * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :], k, mask=mask)
    tl.store(VC + slot * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :], v, mask=mask)
