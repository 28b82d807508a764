"""Linear maps with tensor-parallel roles (the building block of the other layers).

They hold no shapes: `weight` and `bias` are allocated from the owning layer's
declarations (`shard.allocate`), ``bias`` is None when the layer declares it absent.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import minisgl_kernels as kernels
from minisgl_kernels.gemv_choice import use_gemv

from .context import Comm

#: below this many rows a CPU product runs as ``W @ x^T`` (see :func:`linear`)
FEW_ROWS = 6


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, equal within round-off, faster for a few rows.

    CUDA: up to 16 rows may run on the Triton GEMV (``minisgl_kernels.gemv``) where it is the
    faster of the two for the shape (timed on first use, or ``MINISGL_KERNELS_GEMV=on|off``;
    see ``minisgl_kernels/gemv_choice.py``). Under tensor parallelism this is each rank's
    local shard, and every rank takes rank 0's choice.

    A CPU decode step of a few rows is bound by reading the weights from memory; for
    ``x @ W^T`` on a row-major W, MKL then picks a kernel that reads them about 1.5x (1 row)
    to 2.5x (2 rows) slower than ``W @ x^T`` (a GEMM with the rows as columns; a single row
    is paired with itself, as that GEMM beats a matrix-vector product). From 6 rows on the
    two are even. ``tools/bench_cpu_linear.py`` measures both on the demo model's shapes. Only with one
    intra-op thread: with two on a loaded 2-core machine the GEMM's thread barriers made it
    far slower than the matrix-vector product, and a quiet machine was not available to
    measure two threads fairly.
    """
    if x.device.type == "cuda":
        return kernels.gemv(x, weight, bias) if use_gemv(x, weight, bias) else F.linear(x, weight, bias)
    rows = x.shape[0] if x.dim() == 2 else 0
    if not (0 < rows < FEW_ROWS and x.device.type == "cpu" and weight.is_contiguous() and _one_thread()):
        return F.linear(x, weight, bias)
    cols = torch.mm(weight, (torch.cat((x, x)) if rows == 1 else x).t())  # [out, max(rows, 2)]
    y = cols.t()[:rows].contiguous()
    return y if bias is None else y.add_(bias)


def _one_thread() -> bool:
    return torch.get_num_threads() == 1


class ColumnLinear(nn.Module):
    """y = x W^T (+ b); W holds this rank's output rows (no communication)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RowLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) (+ b); W holds this rank's input columns."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        y = comm.all_reduce(linear(x, self.weight))
        return y + self.bias if self.bias is not None else y
