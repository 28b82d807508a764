"""Triton grouped GEMMs for routed experts (fused MoE).

The (token, k) pairs of a batch, ``pair = token * top_k + k``, are sorted by expert on
the device and laid out in blocks of BLOCK_M rows, each block holding pairs of one expert
(``moe_align.py``); padding rows hold the sentinel ``num_pairs``. Both kernels run one
program per (block, output tile); a block whose expert is ``>= num_experts`` is unused.
``pairs_bucket`` (unused in the body) is the autotuning key's size class.

* ``moe_gate_up_kernel``: ``H[pair] = act(x[token] @ gate[e].T) * (x[token] @ up[e].T)``
  with gate|up stacked as ``W [E, 2*ffn, dim]`` (gate rows first), the activation fused.
  GLU_OPTS (``MoEOptions``): a gate|up bias ``B [E, 2*ffn]`` (HAS_BIAS), g clamped to
  ``<= limit`` and u to ``[-limit, limit]`` (CLAMP), ``u + up_offset``, and silu's sigmoid
  slope ``g * sigmoid(alpha * g)``.
* ``moe_down_kernel``: ``Y[pair] = (H[pair] @ down[e].T) * weight[pair]`` with
  ``down [E, dim, ffn]``; the caller sums the top_k rows of each token.

Roundings follow the torch loop (``kernels.reference.fused_moe``): each matmul result is
rounded to the model dtype before the activation / routing weight, as ``F.linear`` would.
Launcher: moe_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from minisgl_kernels.act_jit import act_mul, activate
from minisgl_kernels.attention_jit import dot


@triton.jit
def glu_options(
    g,
    u,
    B,
    e,
    offs_n,
    nmask,
    ffn,
    alpha,
    limit,
    up_offset,
    dtype,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CLAMP: tl.constexpr,
):
    """The MoEOptions epilogue on float32 accumulators g, u: bias, round, clamp, offset,
    then ``act(g) * u`` with torch's roundings (``reference.fused_moe``)."""
    if HAS_BIAS:
        g += tl.load(B + e * 2 * ffn + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        u += tl.load(B + e * 2 * ffn + ffn + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    g = g.to(dtype).to(tl.float32)
    u = u.to(dtype).to(tl.float32)
    if CLAMP:
        g = tl.minimum(g, limit)
        u = tl.minimum(tl.maximum(u, -limit), limit)
    u = (u + up_offset).to(dtype).to(tl.float32)
    if ACT == "silu":  # g * sigmoid(alpha * g), each step rounded as torch does
        s = (1.0 / (1.0 + tl.exp(-(g * alpha).to(dtype).to(tl.float32)))).to(dtype).to(tl.float32)
        a = (g * s).to(dtype).to(tl.float32)
    else:
        a = activate(g, ACT).to(dtype).to(tl.float32)
    return (a * u).to(dtype)


@triton.jit
def moe_gate_up_kernel(
    X,
    W,
    H,
    B,
    SORTED,
    BLOCK_EXPERT,
    num_pairs,
    top_k,
    num_experts,
    ffn,
    dim,
    pairs_bucket,
    stride_xt,
    stride_we,
    stride_wn,
    stride_ht,
    alpha,
    limit,
    up_offset,
    ACT: tl.constexpr,
    GLU_OPTS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    CLAMP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLOCK_EXPERT + pid_m).to(tl.int64)
    if e >= num_experts:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SORTED + offs_m).to(tl.int64)
    valid = pair < num_pairs
    token = tl.where(valid, pair // top_k, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < ffn
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = X + token[:, None] * stride_xt + offs_k[None, :]
    g_ptrs = W + e * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + ffn * stride_wn
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        kmask = offs_k < dim - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        wmask = kmask[:, None] & nmask[None, :]
        g = tl.load(g_ptrs, mask=wmask, other=0.0)
        u = tl.load(u_ptrs, mask=wmask, other=0.0)
        acc_g = dot(a, g, acc_g, DOT_PRECISION)
        acc_u = dot(a, u, acc_u, DOT_PRECISION)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    dtype = H.dtype.element_ty
    if GLU_OPTS:
        h = glu_options(acc_g, acc_u, B, e, offs_n, nmask, ffn, alpha, limit, up_offset, dtype, ACT, HAS_BIAS, CLAMP)
    else:
        h = act_mul(acc_g.to(dtype), acc_u.to(dtype), dtype, ACT)
    tl.store(H + pair[:, None] * stride_ht + offs_n[None, :], h, mask=valid[:, None] & nmask[None, :])


@triton.jit
def moe_down_kernel(
    H,
    W,
    Y,
    SORTED,
    BLOCK_EXPERT,
    WEIGHTS,
    num_pairs,
    num_experts,
    dim,
    ffn,
    pairs_bucket,
    stride_ht,
    stride_we,
    stride_wn,
    stride_yt,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLOCK_EXPERT + pid_m).to(tl.int64)
    if e >= num_experts:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(SORTED + offs_m).to(tl.int64)
    valid = pair < num_pairs
    row = tl.where(valid, pair, 0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < dim
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = H + row[:, None] * stride_ht + offs_k[None, :]
    w_ptrs = W + e * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, ffn, BLOCK_K):
        kmask = offs_k < ffn - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = dot(a, w, acc, DOT_PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    dtype = Y.dtype.element_ty
    weight = tl.load(WEIGHTS + row, mask=valid, other=0.0).to(tl.float32)
    y = (acc.to(dtype).to(tl.float32) * weight[:, None]).to(dtype)
    tl.store(Y + pair[:, None] * stride_yt + offs_n[None, :], y, mask=valid[:, None] & nmask[None, :])
