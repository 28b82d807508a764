"""Triton attention building blocks and the varlen extend/prefill kernel.

Scores live in the log2 domain: ``s2 = log2(e) * score`` so softmax uses exp2.
Without soft-cap ``s2 = qk * score_scale`` with ``score_scale = scale * log2(e)``;
with soft-cap ``s2 = cap_log2 * tanh(qk * score_scale)`` with ``score_scale = scale / cap``
and ``cap_log2 = cap * log2(e)``. Launcher: attention_launch.py.

Feature dimension: HEAD_DIM is the real head dim, BLOCK_D the power of two (>= 16, for
tl.dot) that tiles it. At a power-of-two head dim they are equal and the kernels take
exactly the unpadded code path; otherwise loads and stores are masked on the features,
and the padded features load as 0, which leaves q.k and p@v (hence the output) exact.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh through exp2; saturates cleanly to +-1 for large |x|."""
    e = tl.exp2(x * 2.8853900817779268)  # exp(2x)
    return 1.0 - 2.0 / (e + 1.0)


@triton.jit
def tile_mask(rows_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a [rows, BLOCK_D] tile: the valid rows, and the real features when padded."""
    if BLOCK_D == HEAD_DIM:
        return rows_ok[:, None]
    else:
        return rows_ok[:, None] & (offs_d < HEAD_DIM)[None, :]


@triton.jit
def load_rows(ptrs, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load a tile whose rows are all valid: unmasked unless the feature block is padded."""
    if BLOCK_D == HEAD_DIM:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)


@triton.jit
def dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """``acc + a @ b``. DOT_PRECISION "upcast" multiplies in float32: Triton's CPU
    interpreter (3.9) multiplies bfloat16 operands as raw integers, so the launchers
    choose it for bfloat16 under TRITON_INTERPRET only."""
    if DOT_PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def attend_block(
    acc,
    m_i,
    l_i,
    q,
    k,
    v,
    visible,
    score_scale,
    cap_log2,
    SOFTCAP: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One online-softmax step of q [M, D] over a key block k, v [N, D]."""
    qk = dot(q, tl.trans(k), tl.zeros([q.shape[0], k.shape[0]], tl.float32), DOT_PRECISION)
    s = cap_log2 * tanh(qk * score_scale) if SOFTCAP else qk * score_scale
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # with masking, a row with nothing visible yet keeps m = -inf: avoid inf - inf
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new) if MASKED else m_new
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def sink_factor(lse2, sink2):
    """``1 / (1 + 2^(sink2 - lse2))``: the share of the softmax mass left to the keys when a
    sink logit joins the denominator (both in log2 units); 0 when no key was seen (lse2 -inf)."""
    return 1.0 / (1.0 + tl.exp2(sink2 - lse2))


@triton.jit
def with_sinks(o, lse2, Sinks, heads, heads_ok, SINKS: tl.constexpr):
    """``o`` [rows, D] (normalised over the keys, log2-sum-exp ``lse2``) rescaled for the
    per-head sink logits ``Sinks[heads]`` when SINKS."""
    if SINKS:
        sink2 = tl.load(Sinks + heads, mask=heads_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        return o * sink_factor(lse2, sink2)[:, None]
    else:
        return o


@triton.jit
def extend_attention_kernel(
    Q,
    K,
    V,
    Out,
    KC,
    VC,
    CU_Q,
    P_INDPTR,
    P_SLOTS,
    Sinks,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    score_scale,
    cap_log2,
    window,
    seq_bucket,  # seq_bucket: autotune key only
    NUM_Q_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr,
    SINKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (query blocks of the longest request, requests * q heads); heavy blocks first
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    b = tl.program_id(1) // NUM_Q_HEADS
    h = tl.program_id(1) % NUM_Q_HEADS
    kvh = h // GROUP
    q_start = tl.load(CU_Q + b).to(tl.int64)
    n_new = (tl.load(CU_Q + b + 1) - q_start).to(tl.int32)
    if start_m >= n_new:
        return

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < n_new
    q = tl.load(
        Q + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
        mask=tile_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D),
        other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # 1) cached prefix (positions 0 .. n_prefix-1), read through slot indices
    if HAS_PREFIX:
        p_start = tl.load(P_INDPTR + b).to(tl.int64)
        n_prefix = (tl.load(P_INDPTR + b + 1) - p_start).to(tl.int32)
        q_pos = n_prefix + offs_m
        lo = 0
        if WINDOW:
            lo = tl.maximum(n_prefix + start_m - window + 1, 0) // BLOCK_N * BLOCK_N
        for start_n in range(lo, n_prefix, BLOCK_N):
            k_pos = start_n + offs_n
            k_ok = k_pos < n_prefix
            slot = tl.load(P_SLOTS + p_start + k_pos, mask=k_ok, other=0).to(tl.int64)
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
            visible = k_ok[None, :]
            if WINDOW:
                visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
            acc, m_i, l_i = attend_block(
                acc, m_i, l_i, q, k, v, visible, score_scale, cap_log2, SOFTCAP, True, DOT_PRECISION
            )

    # 2) new tokens strictly before this query block: causally visible to every row
    lo = 0
    if WINDOW:
        lo = tl.maximum(start_m - window + 1, 0) // BLOCK_N * BLOCK_N
    for start_n in range(lo, start_m, BLOCK_N):
        k_rows = q_start + start_n + offs_n
        k = load_rows(K + k_rows[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], offs_d, HEAD_DIM, BLOCK_D)
        v = load_rows(V + k_rows[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], offs_d, HEAD_DIM, BLOCK_D)
        visible = (start_n + offs_n)[None, :] > offs_m[:, None] - window  # used only with WINDOW
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, k, v, visible, score_scale, cap_log2, SOFTCAP, WINDOW, DOT_PRECISION
        )

    # 3) the diagonal band: causal mask
    for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, n_new), BLOCK_N):
        k_idx = start_n + offs_n
        k_ok = k_idx < n_new
        k = tl.load(
            K + (q_start + k_idx)[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :],
            mask=tile_mask(k_ok, offs_d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        v = tl.load(
            V + (q_start + k_idx)[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
            mask=tile_mask(k_ok, offs_d, HEAD_DIM, BLOCK_D),
            other=0.0,
        )
        visible = (k_idx[None, :] <= offs_m[:, None]) & k_ok[None, :]
        if WINDOW:
            visible = visible & (k_idx[None, :] > offs_m[:, None] - window)
        acc, m_i, l_i = attend_block(
            acc, m_i, l_i, q, k, v, visible, score_scale, cap_log2, SOFTCAP, True, DOT_PRECISION
        )

    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]  # padding rows may have seen nothing
    lse2 = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    o = with_sinks(o, lse2, Sinks, h + 0 * offs_m, row_ok, SINKS)
    tl.store(
        Out + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
        o.to(Out.dtype.element_ty),
        mask=tile_mask(row_ok, offs_d, HEAD_DIM, BLOCK_D),
    )
