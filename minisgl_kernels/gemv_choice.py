"""Whether a product of a few rows runs on the GEMV kernel or on torch matmul (cuBLAS).

``use_gemv(x, weight, bias)`` answers for one call of ``x @ weight^T (+ bias)``:

* never on CPU, for more than ``MAX_ROWS`` rows, for operands whose last dimension is not
  contiguous, or when ``MINISGL_KERNELS_BACKEND=torch`` asks for torch everywhere;
* ``MINISGL_KERNELS_GEMV=on`` / ``off`` forces the answer for every eligible call;
* ``auto`` (the default) times both for each (rows bucket, N, K, dtype, bias, device) — CUDA
  events around single calls, each after a write of an L2-sized buffer so the weights come
  from memory as they do in a model step, median of ``REPS`` calls after ``WARMUP`` — and
  keeps the faster for the rest of the process. Rows buckets are 1, 2, 4, 8 and 16 (the next
  power of two). The first use of an (N, K, dtype, bias) decides all five at once (and so
  compiles and autotunes the kernel for them): the engine's first forward at start-up
  settles every shape of the model, and no later step pays for it. A first use during
  CUDA-graph capture cannot be timed: it takes torch (and keeps that); the engine runs every
  captured batch size eagerly first.
* Under tensor parallelism (torch.distributed initialised, more than one rank) rank 0's
  answer is broadcast to every rank (one int on the default group), so all ranks run the
  same kernel for their shard. Every rank reaches the same first uses in the same order
  (the ranks run the same forward), so the broadcasts pair up.

The answer is cached per process, so eager and CUDA-graph runs of one process compute with
the same kernel (a new process may choose differently when the two are close).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.nn import functional as F

from minisgl_kernels._dispatch import BACKEND_ENV

GEMV_ENV = "MINISGL_KERNELS_GEMV"
MODES = ("auto", "on", "off")
MAX_ROWS = 16
BUCKETS = (1, 2, 4, 8, 16)
WARMUP = 3
REPS = 15

Key = tuple[int, int, int, torch.dtype, bool, int]
_CHOICE: dict[Key, bool] = {}
_TIMES: dict[Key, tuple[float, float]] = {}  # key -> (gemv us, torch us) of each timed decision


def mode() -> str:
    value = os.environ.get(GEMV_ENV, "auto")
    if value not in MODES:
        raise ValueError(f"{GEMV_ENV} must be one of {MODES}, got {value!r}")
    return value


def rows_bucket(rows: int) -> int:
    return 1 if rows <= 1 else 1 << (rows - 1).bit_length()


def eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CUDA product of 1..MAX_ROWS rows with contiguous last dimensions (Triton allowed)."""
    return (
        x.device.type == "cuda"
        and x.dim() == 2
        and 0 < x.shape[0] <= MAX_ROWS
        and x.stride(-1) == 1
        and weight.dim() == 2
        and weight.stride(-1) == 1
        and x.dtype == weight.dtype
        and os.environ.get(BACKEND_ENV) != "torch"
    )


def use_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """True when ``x @ weight^T (+ bias)`` should run on ``minisgl_kernels.gemv``."""
    if not eligible(x, weight):
        return False
    chosen = mode()
    if chosen != "auto":
        return chosen == "on"
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    key = _key(x.shape[0], weight, x.dtype, bias is not None, dev)
    hit = _CHOICE.get(key)
    if hit is None:
        if torch.cuda.is_current_stream_capturing():  # cannot time (or broadcast); every rank is here too
            hit = _CHOICE[key] = False
        else:
            _decide_shape(x, weight, bias, dev)
            hit = _CHOICE[key]
    return hit


def _key(rows: int, weight: torch.Tensor, dtype: torch.dtype, has_bias: bool, dev: int) -> Key:
    return (rows_bucket(rows), weight.shape[0], weight.shape[1], dtype, has_bias, dev)


def _decide_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dev: int) -> None:
    """Decide every rows bucket of this (N, K, dtype, bias) at once, on copies of x's first row:
    the first use of a shape (a start-up forward) then settles, compiles and autotunes all of
    them, so no later step with another row count pays for it."""
    import minisgl_kernels as kernels

    for rows in BUCKETS:
        key = _key(rows, weight, x.dtype, bias is not None, dev)
        if key in _CHOICE:
            continue
        rows_x = x[:1].expand(rows, -1).contiguous()
        chosen = _CHOICE[key] = _agree(_decide(key, rows_x, weight, bias), x.device)
        if chosen and rows % 16 == 0:  # Triton compiles M = 1, multiples of 16 and the rest apart
            kernels.gemv(rows_x[:-1], weight, bias)


def decisions() -> dict[Key, tuple[bool, float, float]]:
    """The timed decisions of this process: key -> (gemv chosen, gemv us, torch us)."""
    return {k: (_CHOICE[k], *t) for k, t in _TIMES.items() if k in _CHOICE}


def clear() -> None:
    """Forget every decision (tests and benchmarks)."""
    _CHOICE.clear()
    _TIMES.clear()


def _decide(key: Key, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    import minisgl_kernels as kernels

    flush = torch.empty(_l2_bytes(x.device), dtype=torch.uint8, device=x.device)
    ours = _median_us(lambda: kernels.gemv(x, weight, bias), flush)
    theirs = _median_us(lambda: F.linear(x, weight, bias), flush)
    _TIMES[key] = (ours, theirs)
    return ours < theirs


def _median_us(fn: Callable[[], object], flush: torch.Tensor) -> float:
    for _ in range(WARMUP):  # compiles / autotunes the kernel on its first call
        fn()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for start, end in pairs:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(flush.device)
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in pairs)


def _l2_bytes(device: torch.device) -> int:
    size = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    return max(size, 1 << 20)


def _agree(choice: bool, device: torch.device) -> bool:
    """Rank 0's choice on every rank of the default process group (the choice itself alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return choice
    flag = torch.tensor([int(choice)], dtype=torch.int32, device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())
