"""Triton split-KV decode in one launch: the last split of a (request, KV head) reduces.

Same split pass as decode_jit.py. With one split a program writes its output directly.
With several, each program writes its partial output and log2-sum-exp, then takes a
ticket from an int32 counter per (request, KV head) (an atomic add, acquire-release at
GPU scope, after a barrier so all of the program's stores are released). The program
that draws the last ticket reads every partial (bypassing L1), combines them by their
log-sum-exp, writes the output and resets the counter to 0, so the next launch (or a
CUDA-graph replay) finds it zeroed. Launches sharing a counter buffer must be ordered on
one stream. Launcher: attention_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from minisgl_kernels.attention_jit import tile_mask, with_sinks
from minisgl_kernels.decode_jit import attend_split, split_bounds


@triton.jit
def decode_fused_kernel(
    Q,
    KC,
    VC,
    KV_INDPTR,
    KV_LENS,
    KV_SLOTS,
    O_PART,
    LSE_PART,
    COUNTER,
    Out,
    Sinks,
    stride_qb,
    stride_qh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    stride_ob,
    stride_oh,
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
    SINKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREFETCH_SLOTS: tl.constexpr,
    PAGED: tl.constexpr,
):
    kvh = tl.program_id(0)
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
    offs_d = tl.arange(0, BLOCK_D)
    g_ok = offs_g < GROUP
    heads = kvh * GROUP + offs_g
    out_ptrs = Out + b.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    out_mask = tile_mask(g_ok, offs_d, HEAD_DIM, BLOCK_D)
    if num_splits == 1:  # no partials, no counter (Triton may specialise num_splits == 1)
        o = with_sinks(o, lse, Sinks, heads, g_ok, SINKS)
        tl.store(out_ptrs, o.to(Out.dtype.element_ty), mask=out_mask)
    else:
        first = (b.to(tl.int64) * NUM_Q_HEADS + heads) * num_splits  # split 0's partial
        tl.store(O_PART + (first + split)[:, None] * BLOCK_D + offs_d[None, :], o, mask=g_ok[:, None])
        tl.store(LSE_PART + first + split, lse, mask=g_ok)
        tl.debug_barrier()  # every thread's partial stores precede the (one-thread) release
        counter = COUNTER + b * tl.num_programs(0) + kvh
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == num_splits - 1:
            m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
            total = tl.zeros([GROUP_PAD], tl.float32)
            acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
            for s in range(num_splits):  # online log-sum-exp combine; empty splits weigh 0
                lse_s = tl.load(LSE_PART + first + s, mask=g_ok, other=float("-inf"), cache_modifier=".cg")
                o_s = tl.load(
                    O_PART + (first + s)[:, None] * BLOCK_D + offs_d[None, :],
                    mask=g_ok[:, None],
                    other=0.0,
                    cache_modifier=".cg",
                )
                m_new = tl.maximum(m, lse_s)
                shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m - shift)
                w = tl.exp2(lse_s - shift)
                acc = acc * alpha[:, None] + o_s * w[:, None]
                total = total * alpha + w
                m = m_new
            out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
            lse_all = tl.where(total > 0.0, m + tl.log2(tl.where(total > 0.0, total, 1.0)), float("-inf"))
            out = with_sinks(out, lse_all, Sinks, heads, g_ok, SINKS)
            tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=out_mask)
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
