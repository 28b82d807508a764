"""Launcher for the Triton RMSNorm kernel (see norm_jit.py)."""

from __future__ import annotations

import torch

from minisgl_kernels._util import cdiv, next_pow2, sm_count
from minisgl_kernels.norm_jit import rmsnorm_kernel, rmsnorm_persistent_kernel

MAX_HIDDEN = 65536
# Defaults, from side-by-side timings on an H100 (tools/bench_kernels.py --compare, docs/perf.md):
# PROGRAMS_PER_SM = 0 launches one program per row tile; > 0 at most that many programs per
# multiprocessor, each looping over row tiles (slower there: 2.54-2.67 vs 2.64 TB/s at M=4096).
# evict_first on the single-use loads and stores: RMSNorm 0.5-2.8% faster, add+RMSNorm not.
PROGRAMS_PER_SM = 0
EVICT_FIRST_PLAIN = True  # evict_first default without a residual
EVICT_FIRST_RESIDUAL = False  # ... and with one
PREFETCH = False  # persistent grid: load the next tile before normalising this one


def _rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as [rows, hidden]; raise if that needs a copy of a buffer we write."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError as err:
        raise ValueError(f"{name} must be viewable as [-1, hidden] (strides {t.stride()})") from err


def rmsnorm_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float,
    cast_before_weight: bool,
    out: torch.Tensor,
    residual: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    programs_per_sm: int | None = None,
    evict_first: bool | None = None,
    prefetch: bool | None = None,
) -> None:
    """Write rmsnorm(x [+ residual]) into ``out`` (and the sum into ``residual_out``).

    ``programs_per_sm``, ``evict_first``, ``prefetch`` override the module defaults above.
    """
    hidden = x.shape[-1]
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} exceeds the kernel's limit of {MAX_HIDDEN}")
    x2 = x.reshape(-1, hidden)
    y2 = _rows("out", out)
    r2 = x2 if residual is None else residual.reshape(-1, hidden)
    s2 = y2 if residual_out is None else _rows("residual_out", residual_out)
    n_rows = x2.shape[0]
    if n_rows == 0:
        return
    block_n = next_pow2(hidden)
    block_m = max(1, min(64, 2048 // block_n))
    num_warps = 4 if block_n <= 2048 else (8 if block_n <= 8192 else 16)
    args = (
        x2,
        r2,
        weight,
        y2,
        s2,
        x2.stride(0),
        r2.stride(0),
        y2.stride(0),
        s2.stride(0),
        n_rows,
        hidden,
        float(eps),
        float(offset),
    )
    meta = {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "HAS_RESIDUAL": residual is not None,
        "CAST_BEFORE_WEIGHT": cast_before_weight,
        "num_warps": num_warps,
    }
    per_sm = PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    evict = evict_first
    if evict is None:
        evict = EVICT_FIRST_PLAIN if residual is None else EVICT_FIRST_RESIDUAL
    tiles = cdiv(n_rows, block_m)
    if per_sm <= 0 and not evict:  # the original kernel
        rmsnorm_kernel[(tiles,)](*args, **meta)
        return
    grid = tiles if per_sm <= 0 else min(tiles, per_sm * sm_count(x.device))
    rmsnorm_persistent_kernel[(grid,)](
        *args,
        **meta,
        EVICT="evict_first" if evict else "",
        PREFETCH=PREFETCH if prefetch is None else prefetch,
    )
