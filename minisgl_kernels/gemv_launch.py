"""Launcher for the few-row GEMV kernel (gemv_jit.py).

Rows of x are taken ``BLOCK_M`` at a time: the rows bucket ``next_pow2(M)`` (at most
``MAX_BLOCK_M``), or 16 for the tensor-core configs; a larger M gets a second grid axis.
The grid's first axis spreads N over ``cdiv(N, BLOCK_N)`` programs
(at decode shapes hundreds to thousands, so every multiprocessor is busy without a K split).
On CUDA, ``BLOCK_N`` / ``BLOCK_K`` / warps / stages are autotuned per (rows bucket, N, K, bias,
dtype) on first use: run each shape once before capturing a CUDA graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.testing

from minisgl_kernels._util import cdiv, interpreting, next_pow2
from minisgl_kernels.gemv_jit import gemv_kernel

AUTOTUNE_ENV = "MINISGL_KERNELS_AUTOTUNE"
MAX_BLOCK_M = 16
EVICT_WEIGHTS = "evict_first"  # the weights are read once per call


def _config(m: int, n: int, k: int, warps: int, stages: int, dot: bool = False) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "USE_DOT": dot}, num_warps=warps, num_stages=stages)


def _reduce_configs(m: int, spec: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [_config(m, n, k, w, st) for n, k, w, st in spec]


# tensor-core candidates for any rows bucket > 1: BLOCK_M 16 (tl.dot's smallest tile), the rows
# past M clamped (re-read, not written)
_DOT = [_config(16, 16, 128, 4, 3, True), _config(16, 32, 128, 4, 3, True)]
# Per rows bucket (next_pow2(M), at most 16); the first entry is the untuned default
# (MINISGL_KERNELS_AUTOTUNE=0). Without tl.dot each step holds a [BLOCK_M, BLOCK_N, BLOCK_K]
# float32 product in registers: kept at <= 64 values per thread. M = 1 keeps a
# [BLOCK_N, BLOCK_K] partial across the K loop. No config spills on sm_90 (ptxas: 36-80 registers).
_CONFIGS: dict[int, list[triton.Config]] = {
    1: _reduce_configs(
        1,
        [
            *[(8, 512, 4, 2), (4, 512, 4, 2), (16, 256, 4, 2), (8, 256, 4, 3)],
            *[(4, 1024, 4, 2), (16, 512, 8, 2), (32, 256, 8, 2), (2, 1024, 4, 2)],
        ],
    ),
    2: _reduce_configs(2, [(8, 256, 4, 2), (4, 512, 4, 2), (16, 256, 8, 2), (8, 512, 8, 2)]) + _DOT,
    4: _reduce_configs(4, [(4, 256, 4, 2), (8, 128, 4, 2), (8, 256, 8, 2), (16, 128, 8, 2)]) + _DOT,
    # (8, 128, 4) and (4, 256, 4): 8 weight values a thread, so 16-byte weight loads (the others: 8 bytes)
    8: _reduce_configs(8, [(4, 128, 4, 2), (8, 128, 8, 2), (8, 128, 4, 2), (4, 256, 4, 2), (4, 256, 8, 2)]) + _DOT,
    16: [
        *_DOT,
        _config(16, 16, 256, 4, 3, True),
        _config(16, 32, 256, 8, 3, True),
        *_reduce_configs(16, [(2, 128, 4, 2), (4, 128, 8, 2)]),
    ],
}
_HEURISTICS = {"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0}


def _bench(kernel_call: Callable[[], object], quantiles: tuple[float, ...]) -> object:
    """Autotuning timer: triton's do_bench (L2 flushed before each call) with a short budget, as
    every (BLOCK_M, N, K) of a model is tuned at start-up and a call takes microseconds."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


_PLAIN = triton.heuristics(_HEURISTICS)(gemv_kernel)
_TUNED = {
    bm: triton.autotune(configs, key=["N", "K", "HAS_BIAS"], do_bench=_bench)(_PLAIN)
    for bm, configs in _CONFIGS.items()
}
INTERPRET_CONFIG: dict[str, Any] = {"BLOCK_N": 4, "BLOCK_K": 32}


def _fixed(block_m: int, dtype: torch.dtype) -> dict[str, Any] | None:
    """Launch parameters that skip autotuning, or None to autotune (see attention_launch._fixed)."""
    if interpreting():
        # the interpreter also runs the tensor-core path at M > 8 (tl.dot needs 16x16 tiles)
        dot = block_m == MAX_BLOCK_M and dtype != torch.float32
        return {**INTERPRET_CONFIG, "BLOCK_M": block_m, "BLOCK_N": 16 if dot else 4, "USE_DOT": dot}
    no_dot = [c for c in _CONFIGS[block_m] if not c.kwargs["USE_DOT"]]
    if dtype == torch.float32:  # a parity-testing dtype: no tf32 dot, one config
        c = no_dot[0]
    elif os.environ.get(AUTOTUNE_ENV, "1") == "0":
        c = _CONFIGS[block_m][0]
    else:
        return None
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def block_m_for(rows: int) -> int:
    """The rows bucket: next_pow2(rows), at most MAX_BLOCK_M (a config may take 16 rows a block)."""
    return min(MAX_BLOCK_M, next_pow2(rows))


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """Write ``x @ weight^T (+ bias)`` into ``out`` (x [M, K], weight [N, K], out [M, N])."""
    m, k = x.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        return
    if k == 0:
        out.copy_(bias.expand(m, n) if bias is not None else torch.zeros_like(out))
        return
    block_m = block_m_for(m)
    args = (x, weight, weight if bias is None else bias, out, m, n, k, x.stride(0), weight.stride(0), out.stride(0))
    meta = {
        "HAS_BIAS": bias is not None,
        "EVICT": "" if interpreting() else EVICT_WEIGHTS,
        "UPCAST": interpreting() and x.dtype == torch.bfloat16,
    }
    fixed = _fixed(block_m, x.dtype)
    if fixed is not None:
        grid = (cdiv(n, fixed["BLOCK_N"]), cdiv(m, fixed["BLOCK_M"]))
        _PLAIN[grid](*args, **meta, **fixed)
        return

    def grid(cfg: dict[str, Any]) -> tuple[int, int]:
        return (cdiv(n, cfg["BLOCK_N"]), cdiv(m, cfg["BLOCK_M"]))

    _TUNED[block_m][grid](*args, **meta)
