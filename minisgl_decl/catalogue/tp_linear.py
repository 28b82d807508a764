"""Linear maps with tensor-parallel roles (the building block of the other layers).

They hold no shapes: `weight` and `bias` are allocated from the owning layer's
declarations (`shard.allocate`), ``bias`` is None when the layer declares it absent.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .context import Comm


class ColumnLinear(nn.Module):
    """y = x W^T (+ b); W holds this rank's output rows (no communication)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) (+ b); W holds this rank's input columns."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        y = comm.all_reduce(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y
