"""Triton rotary embedding (HF ``rotate_half`` layout), in place on q and k, optionally
storing the rotated k and v into the slot-addressed KV cache in the same launch.

Grid ``(tokens, 2)``: program ``(t, 0)`` rotates token t's query heads, ``(t, 1)`` its key
heads (and stores k and v when STORE). cos/sin come from the per-model table
``[table_len, rotary_dim]`` (cos in the first half, sin in the second, attention scaling
folded in); a position past the table is computed here from ``inv_freq`` instead. As in
HF, cos/sin are rounded to the model dtype before use; the rotation itself is computed in
float32 and rounded once. Launcher: rope_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    X,
    stride_h,
    cos,
    sin,
    offs_h,
    offs_f,
    hmask,
    fmask,
    W,
    eps,
    offset,
    C,
    stride_ch,
    keep,
    HALF: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NORM: tl.constexpr,
    CAST_BEFORE_WEIGHT: tl.constexpr,
    CACHE: tl.constexpr,
):
    """Rotate features [0, 2*HALF) of heads offs_h of one token in place.

    NORM: first RMSNorm each head over its HEAD_DIM features with weight W (as
    ``kernels.rmsnorm``: float32, ``offset + W``, rounded to the dtype before the rope);
    features past the rotary dim are written back normalised. CACHE: also write the
    resulting head rows to the cache row C where ``keep`` (per head).
    """
    ptr1 = X + offs_h[:, None] * stride_h + offs_f[None, :]
    mask = hmask[:, None] & fmask[None, :]
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    rest = (offs_d >= 2 * HALF) & (offs_d < HEAD_DIM)
    rmask = hmask[:, None] & rest[None, :]
    rptr = X + offs_h[:, None] * stride_h + offs_d[None, :]
    xr = tl.load(rptr, mask=rmask, other=0.0)
    if NORM:
        xrf = xr.to(tl.float32)
        sq = tl.sum(x1f * x1f, axis=1) + tl.sum(x2f * x2f, axis=1) + tl.sum(xrf * xrf, axis=1)
        rstd = tl.rsqrt(sq / HEAD_DIM + eps)[:, None]
        w1 = offset + tl.load(W + offs_f, mask=fmask, other=0.0).to(tl.float32)[None, :]
        w2 = offset + tl.load(W + HALF + offs_f, mask=fmask, other=0.0).to(tl.float32)[None, :]
        wr = offset + tl.load(W + offs_d, mask=rest, other=0.0).to(tl.float32)[None, :]
        n1, n2, nr = x1f * rstd, x2f * rstd, xrf * rstd
        if CAST_BEFORE_WEIGHT:
            n1, n2, nr = n1.to(dtype).to(tl.float32), n2.to(dtype).to(tl.float32), nr.to(dtype).to(tl.float32)
        x1f = (n1 * w1).to(dtype).to(tl.float32)
        x2f = (n2 * w2).to(dtype).to(tl.float32)
        xr = (nr * wr).to(dtype)
        if 2 * HALF < HEAD_DIM:
            tl.store(rptr, xr, mask=rmask)
    c, s = cos[None, :], sin[None, :]
    y1 = (x1f * c - x2f * s).to(dtype)
    y2 = (x2f * c + x1f * s).to(dtype)
    tl.store(ptr1, y1, mask=mask)
    tl.store(ptr1 + HALF, y2, mask=mask)
    if CACHE:
        c1 = C + offs_h[:, None] * stride_ch + offs_f[None, :]
        tl.store(c1, y1, mask=mask & keep[:, None])
        tl.store(c1 + HALF, y2, mask=mask & keep[:, None])
        if 2 * HALF < HEAD_DIM:
            tl.store(C + offs_h[:, None] * stride_ch + offs_d[None, :], xr, mask=rmask & keep[:, None])


@triton.jit
def rope_kernel(
    Q,
    K,
    V,
    KC,
    VC,
    SLOTS,
    POS,
    TABLE,
    INV_FREQ,
    QW,
    KW,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcs,
    stride_kch,
    stride_vcs,
    stride_vch,
    table_len,
    scaling,
    eps,
    offset,
    NUM_Q_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    STORE: tl.constexpr,
    NORM: tl.constexpr,
    CAST_BEFORE_WEIGHT: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    which = tl.program_id(1)
    pos = tl.load(POS + t).to(tl.int64)
    offs_f = tl.arange(0, HALF_PAD)
    fmask = offs_f < HALF
    if pos < table_len:
        row = TABLE + pos * (2 * HALF)
        cos = tl.load(row + offs_f, mask=fmask, other=0.0)
        sin = tl.load(row + HALF + offs_f, mask=fmask, other=0.0)
    else:  # beyond the table: the same float32 product HF forms, cos/sin in float32
        freq = pos.to(tl.float32) * tl.load(INV_FREQ + offs_f, mask=fmask, other=0.0)
        cos = tl.cos(freq) * scaling
        sin = tl.sin(freq) * scaling
    dtype = Q.dtype.element_ty
    cos = cos.to(dtype).to(tl.float32)
    sin = sin.to(dtype).to(tl.float32)
    if which == 0:
        offs_qh = tl.arange(0, Q_HEADS_PAD)
        _rotate_heads(
            Q + t * stride_qt,
            stride_qh,
            cos,
            sin,
            offs_qh,
            offs_f,
            offs_qh < NUM_Q_HEADS,
            fmask,
            QW,
            eps,
            offset,
            Q,
            0,
            offs_qh < NUM_Q_HEADS,
            HALF,
            HEAD_DIM,
            BLOCK_D,
            NORM,
            CAST_BEFORE_WEIGHT,
            False,
        )
    else:
        offs_h = tl.arange(0, KV_HEADS_PAD)
        hmask = offs_h < NUM_KV_HEADS
        keep = hmask
        kc_row = KC
        if STORE:
            slot = tl.load(SLOTS + t).to(tl.int64)
            keep = hmask & (offs_h.to(tl.int64) * 0 + slot >= 0)  # a negative slot is padding: nothing stored
            kc_row = KC + tl.maximum(slot, 0) * stride_kcs
        _rotate_heads(
            K + t * stride_kt,
            stride_kh,
            cos,
            sin,
            offs_h,
            offs_f,
            hmask,
            fmask,
            KW,
            eps,
            offset,
            kc_row,
            stride_kch,
            keep,
            HALF,
            HEAD_DIM,
            BLOCK_D,
            NORM,
            CAST_BEFORE_WEIGHT,
            STORE,
        )
        if STORE:
            offs_d = tl.arange(0, BLOCK_D)
            dmask = keep[:, None] & (offs_d < HEAD_DIM)[None, :]
            v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=dmask)
            vc_row = VC + tl.maximum(slot, 0) * stride_vcs
            tl.store(vc_row + offs_h[:, None] * stride_vch + offs_d[None, :], v, mask=dmask)
