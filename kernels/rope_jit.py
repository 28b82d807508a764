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
    X, stride_h, cos, sin, offs_h, offs_f, hmask, fmask,
    HALF: tl.constexpr,
):
    """Rotate features [0, 2*HALF) of heads offs_h of one token in place; return the halves."""
    ptr1 = X + offs_h[:, None] * stride_h + offs_f[None, :]
    mask = hmask[:, None] & fmask[None, :]
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0)
    c, s = cos[None, :], sin[None, :]
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    y1 = (x1f * c - x2f * s).to(x1.dtype)
    y2 = (x2f * c + x1f * s).to(x1.dtype)
    tl.store(ptr1, y1, mask=mask)
    tl.store(ptr1 + HALF, y2, mask=mask)
    return y1, y2


@triton.jit
def rope_kernel(
    Q, K, V, KC, VC, SLOTS, POS, TABLE, INV_FREQ,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcs, stride_kch, stride_vcs, stride_vch,
    table_len, scaling,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, STORE: tl.constexpr,
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
        _rotate_heads(Q + t * stride_qt, stride_qh, cos, sin, offs_qh, offs_f, offs_qh < NUM_Q_HEADS, fmask, HALF)
    else:
        offs_h = tl.arange(0, KV_HEADS_PAD)
        hmask = offs_h < NUM_KV_HEADS
        k_row = K + t * stride_kt
        y1, y2 = _rotate_heads(k_row, stride_kh, cos, sin, offs_h, offs_f, hmask, fmask, HALF)
        if STORE:
            slot = tl.load(SLOTS + t).to(tl.int64)
            if slot >= 0:  # a negative slot is padding: nothing to store
                mask = hmask[:, None] & fmask[None, :]
                kc = KC + slot * stride_kcs + offs_h[:, None] * stride_kch + offs_f[None, :]
                tl.store(kc, y1, mask=mask)
                tl.store(kc + HALF, y2, mask=mask)
                offs_d = tl.arange(0, BLOCK_D)
                if 2 * HALF < HEAD_DIM:  # features past rotary_dim pass through
                    rest = hmask[:, None] & (offs_d >= 2 * HALF)[None, :] & (offs_d < HEAD_DIM)[None, :]
                    k_rest = tl.load(k_row + offs_h[:, None] * stride_kh + offs_d[None, :], mask=rest)
                    tl.store(KC + slot * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :], k_rest, mask=rest)
                dmask = hmask[:, None] & (offs_d < HEAD_DIM)[None, :]
                v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=dmask)
                tl.store(VC + slot * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :], v, mask=dmask)
