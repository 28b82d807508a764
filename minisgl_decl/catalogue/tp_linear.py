"""Linear maps with tensor-parallel roles (the building block of the other layers)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .context import Comm


def empty_param(*shape: int) -> nn.Parameter:
    """A parameter placeholder on the meta device: the loader plan fills it later.

    (Buffers, such as rope tables, are computed at build time on the real device.)
    """
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


class ColumnLinear(nn.Module):
    """y = x W^T (+ b); W holds this rank's output rows (no communication)."""

    def __init__(self, in_dim: int, out_local: int, bias: bool) -> None:
        super().__init__()
        self.weight = empty_param(out_local, in_dim)
        self.bias = empty_param(out_local) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) (+ b); W holds this rank's input columns."""

    def __init__(self, in_local: int, out_dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = empty_param(out_dim, in_local)
        self.bias = empty_param(out_dim) if bias else None

    def forward(self, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        y = comm.all_reduce(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y
