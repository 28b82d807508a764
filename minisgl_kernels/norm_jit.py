"""Triton RMSNorm kernel (optionally fused with the residual add). Launcher: norm_launch.py."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rmsnorm_kernel(
    X,
    R,
    W,
    Y,
    S,  # input, residual (or X), weight, normed output, sum output (or Y)
    stride_x,
    stride_r,
    stride_y,
    stride_s,  # row strides, in elements
    n_rows,
    n_cols,
    eps,
    offset,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # next power of two >= n_cols
    HAS_RESIDUAL: tl.constexpr,
    CAST_BEFORE_WEIGHT: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0)
        summed = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_s + cols[None, :], summed, mask=mask)
        xf = summed.to(tl.float32)
    else:
        xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, axis=1) / n_cols
    normed = xf * tl.rsqrt(mean_sq + eps)[:, None]
    if CAST_BEFORE_WEIGHT:
        normed = normed.to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32) + offset
    y = normed * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _load_tile(P, stride, rows, cols, n_rows, n_cols, EVICT: tl.constexpr):
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    return tl.load(P + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICT)


@triton.jit
def rmsnorm_persistent_kernel(
    X,
    R,
    W,
    Y,
    S,  # as rmsnorm_kernel
    stride_x,
    stride_r,
    stride_y,
    stride_s,
    n_rows,
    n_cols,
    eps,
    offset,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    CAST_BEFORE_WEIGHT: tl.constexpr,
    EVICT: tl.constexpr,  # eviction policy of the single-use loads and stores ("" = default)
    PREFETCH: tl.constexpr,  # load the next tile's rows before normalising this one
):
    """rmsnorm_kernel over a persistent grid: program p handles row tiles p, p + P, ...
    and loads the weight once."""
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_N)
    tile_rows = tl.arange(0, BLOCK_M).to(tl.int64)  # row * stride in int64
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32) + offset
    if PREFETCH:
        rows = tile_rows + pid * BLOCK_M
        x_next = _load_tile(X, stride_x, rows, cols, n_rows, n_cols, EVICT)
        if HAS_RESIDUAL:
            r_next = _load_tile(R, stride_r, rows, cols, n_rows, n_cols, EVICT)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), step):
        rows = tile_rows + tile * BLOCK_M
        mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
        if PREFETCH:
            x = x_next
            x_next = _load_tile(X, stride_x, rows + step * BLOCK_M, cols, n_rows, n_cols, EVICT)
            if HAS_RESIDUAL:
                r = r_next
                r_next = _load_tile(R, stride_r, rows + step * BLOCK_M, cols, n_rows, n_cols, EVICT)
        else:
            x = _load_tile(X, stride_x, rows, cols, n_rows, n_cols, EVICT)
            if HAS_RESIDUAL:
                r = _load_tile(R, stride_r, rows, cols, n_rows, n_cols, EVICT)
        if HAS_RESIDUAL:
            summed = (x.to(tl.float32) + r.to(tl.float32)).to(S.dtype.element_ty)
            tl.store(S + rows[:, None] * stride_s + cols[None, :], summed, mask=mask, eviction_policy=EVICT)
            xf = summed.to(tl.float32)
        else:
            xf = x.to(tl.float32)
        mean_sq = tl.sum(xf * xf, axis=1) / n_cols
        normed = xf * tl.rsqrt(mean_sq + eps)[:, None]
        if CAST_BEFORE_WEIGHT:
            normed = normed.to(Y.dtype.element_ty).to(tl.float32)
        y = (normed * w[None, :]).to(Y.dtype.element_ty)
        tl.store(Y + rows[:, None] * stride_y + cols[None, :], y, mask=mask, eviction_policy=EVICT)
