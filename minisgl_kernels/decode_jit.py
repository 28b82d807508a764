"""Triton split-KV (flash-decoding) decode attention: a split pass and a reduce pass.

One program of the split pass handles one (request, KV head, split) and all the
query heads that share the KV head, so q @ k^T is a [GROUP_PAD, BLOCK_N] tensor-core
dot. Every split writes its partial output and log2-sum-exp (``-inf`` when empty), so
the reduce pass needs no data from the host. Partial outputs are BLOCK_D wide (padded
features are exact zeros), so only the final store is masked on the features.
``split_bounds`` and ``attend_split`` are shared with the fused kernel
(decode_fused_jit.py). Launcher: attention_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from minisgl_kernels.attention_jit import attend_block, sink_factor, tile_mask


@triton.jit
def split_bounds(
    KV_INDPTR,
    KV_LENS,
    row_stride,
    b,
    split,
    window,
    num_splits,
    WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr,
):
    """Request b's first cache-list index, and this split's [start, end) key positions.

    PAGED: KV_INDPTR holds request-table rows and KV_LENS the context lengths; request b's
    slots start at ``row * row_stride`` of the flattened table. Else ``KV_INDPTR [B+1]``.
    """
    if PAGED:
        kv_start = tl.load(KV_INDPTR + b).to(tl.int64) * row_stride
        kv_len = tl.load(KV_LENS + b).to(tl.int32)
    else:
        kv_start = tl.load(KV_INDPTR + b).to(tl.int64)
        kv_len = (tl.load(KV_INDPTR + b + 1) - kv_start).to(tl.int32)
    lo = 0
    if WINDOW:  # the query sits at position kv_len - 1
        lo = tl.maximum(kv_len - window, 0)
    per_split = tl.cdiv(tl.cdiv(kv_len - lo, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, kv_len)
    return kv_start, start, end


@triton.jit
def attend_split(
    Q,
    KC,
    VC,
    KV_SLOTS,
    b,
    kvh,
    kv_start,
    start,
    end,
    stride_qb,
    stride_qh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    score_scale,
    cap_log2,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREFETCH_SLOTS: tl.constexpr,
):
    """Attention of KV head kvh's query heads over key positions [start, end): the
    normalised output [GROUP_PAD, BLOCK_D] (zeros when empty) and log2-sum-exp (-inf)."""
    offs_g = tl.arange(0, GROUP_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kvh * GROUP + offs_g
    q = tl.load(
        Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=tile_mask(offs_g < GROUP, offs_d, HEAD_DIM, BLOCK_D),
        other=0.0,
    )
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    if PREFETCH_SLOTS:  # slot indices one block ahead, so K/V addresses are ready at once
        slot_next = tl.load(KV_SLOTS + kv_start + start + offs_n, mask=start + offs_n < end, other=0)
    for start_n in range(start, end, BLOCK_N):
        k_pos = start_n + offs_n
        k_ok = k_pos < end
        if PREFETCH_SLOTS:
            slot = slot_next.to(tl.int64)
            slot_next = tl.load(KV_SLOTS + kv_start + BLOCK_N + k_pos, mask=BLOCK_N + k_pos < end, other=0)
        else:
            slot = tl.load(KV_SLOTS + kv_start + k_pos, mask=k_ok, other=0).to(tl.int64)
        k = tl.load(
            KC + slot[:, None] * stride_kcs + kvh * stride_kch + offs_d[None, :],
            mask=tile_mask(k_ok, offs_d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        v = tl.load(
            VC + slot[:, None] * stride_vcs + kvh * stride_vch + offs_d[None, :],
            mask=tile_mask(k_ok, offs_d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, k, v, k_ok[None, :], score_scale, cap_log2, SOFTCAP, True, DOT_PRECISION
        )
    has_any = l_i > 0.0
    o = acc / tl.where(has_any, l_i, 1.0)[:, None]
    lse = tl.where(has_any, m_i + tl.log2(tl.where(has_any, l_i, 1.0)), float("-inf"))
    return o, lse


@triton.jit
def decode_split_kernel(
    Q,
    KC,
    VC,
    KV_INDPTR,
    KV_LENS,
    KV_SLOTS,
    O_PART,
    LSE_PART,
    stride_qb,
    stride_qh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    score_scale,
    cap_log2,
    window,
    num_splits,
    row_stride,
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREFETCH_SLOTS: tl.constexpr,
    PAGED: tl.constexpr,
):
    kvh = tl.program_id(0)  # fastest: the KV heads of one slot row are read together
    b = tl.program_id(1)
    split = tl.program_id(2)
    kv_start, start, end = split_bounds(
        KV_INDPTR, KV_LENS, row_stride, b, split, window, num_splits, WINDOW, BLOCK_N, PAGED
    )
    o, lse = attend_split(
        Q,
        KC,
        VC,
        KV_SLOTS,
        b,
        kvh,
        kv_start,
        start,
        end,
        stride_qb,
        stride_qh,
        stride_kcs,
        stride_kch,
        stride_vcs,
        stride_vch,
        score_scale,
        cap_log2,
        GROUP,
        GROUP_PAD,
        HEAD_DIM,
        BLOCK_D,
        SOFTCAP,
        DOT_PRECISION,
        BLOCK_N,
        PREFETCH_SLOTS,
    )
    offs_g = tl.arange(0, GROUP_PAD)
    g_ok = offs_g < GROUP
    part = (b.to(tl.int64) * NUM_Q_HEADS + kvh * GROUP + offs_g) * num_splits + split
    tl.store(O_PART + part[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :], o, mask=g_ok[:, None])
    tl.store(LSE_PART + part, lse, mask=g_ok)


@triton.jit
def decode_reduce_kernel(
    O_PART,
    LSE_PART,
    Out,
    Sinks,
    stride_ob,
    stride_oh,
    NUM_Q_HEADS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINKS: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    part = (b.to(tl.int64) * NUM_Q_HEADS + h) * NUM_SPLITS + offs_s
    lse = tl.load(LSE_PART + part, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # empty splits weigh 0
    o = tl.load(O_PART + part[:, None] * BLOCK_D + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    total = tl.sum(w, axis=0)
    out = tl.sum(o * w[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    if SINKS:
        lse2 = tl.where(total > 0.0, m + tl.log2(tl.where(total > 0.0, total, 1.0)), float("-inf"))
        out = out * sink_factor(lse2, tl.load(Sinks + h).to(tl.float32) * 1.4426950408889634)
    out_ptrs = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_d
    if BLOCK_D == HEAD_DIM:
        tl.store(out_ptrs, out.to(Out.dtype.element_ty))
    else:
        tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)
