"""Triton GEMV for a few rows: ``y[M, N] = x[M, K] @ W[N, K]^T (+ b)``. Launcher: gemv_launch.py.

W is row-major (as ``torch.nn.Linear`` stores it), so each output column ``n`` is a dot
product of ``x`` with the contiguous row ``W[n, :]``. Program ``(pid_n, pid_m)`` owns
``BLOCK_N`` weight rows and ``BLOCK_M`` rows of x, walks K in ``BLOCK_K`` steps and writes
its outputs once: no split-K, no workspace, no atomics, so a given config always sums in
the same order (deterministic). Weight loads are single-use and carry ``EVICT``
("evict_first"); x is re-read by every program and keeps the default policy.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_k_step(w_ptrs, x_ptrs, rk, k0, K, EVEN_K: tl.constexpr, EVICT: tl.constexpr):
    """One K step's weight tile (single-use: `EVICT`) and x tile; masked past K unless EVEN_K."""
    if EVEN_K:
        w = tl.load(w_ptrs, eviction_policy=EVICT)
        x = tl.load(x_ptrs)
    else:
        k_ok = (rk + k0) < K
        w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0, eviction_policy=EVICT)
        x = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
    return w, x


@triton.jit
def gemv_kernel(
    X,
    W,
    B,
    Y,  # x [M, K], weight [N, K], bias [N] (or W when HAS_BIAS is False), y [M, N]
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,  # row strides, in elements (the last dims are contiguous)
    BLOCK_M: tl.constexpr,  # rows of x per program (a power of two)
    BLOCK_N: tl.constexpr,  # weight rows (output columns) per program
    BLOCK_K: tl.constexpr,  # K step
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no masks on the K loads
    EVICT: tl.constexpr,  # eviction policy of the weight loads ("" = default)
    USE_DOT: tl.constexpr,  # tensor-core tl.dot (BLOCK_M, BLOCK_N >= 16; 16-bit dtypes)
    UPCAST: tl.constexpr,  # multiply in float32 inside tl.dot (the CPU interpreter's bf16 dot is wrong)
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    # out-of-range rows are clamped to the last valid one (read twice, never written), so the
    # loads need no row mask and stay vectorised along K
    rn_c = tl.minimum(rn, N - 1).to(tl.int64)
    rm_c = tl.minimum(rm, M - 1).to(tl.int64)
    w_ptrs = W + rn_c[:, None] * stride_wn + rk[None, :]
    x_ptrs = X + rm_c[:, None] * stride_xm + rk[None, :]
    if BLOCK_M == 1:
        # one row: keep a [BLOCK_N, BLOCK_K] float32 partial and reduce over K once at the end
        part = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w, x = _load_k_step(w_ptrs, x_ptrs, rk, k0, K, EVEN_K, EVICT)
            part += w.to(tl.float32) * x.to(tl.float32)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        acc = tl.sum(part, axis=1)[None, :]  # [1, BLOCK_N]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            w, x = _load_k_step(w_ptrs, x_ptrs, rk, k0, K, EVEN_K, EVICT)
            if USE_DOT:
                if UPCAST:
                    acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
                else:
                    acc += tl.dot(x, tl.trans(w))
            else:
                acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(B + rn_c).to(tl.float32)[None, :]
    y_ptrs = Y + rm[:, None].to(tl.int64) * stride_ym + rn[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])
