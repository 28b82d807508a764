"""A general linear layer with an explicit tensor-parallel role."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from .context import ForwardBatch
from .params import ParamDecl, column, replicated, row
from .registry import LayerArgs, LayerKind
from .shard import Shard
from .tp_linear import linear


class LinearArgs(LayerArgs):
    in_dim: PositiveInt
    out_dim: PositiveInt
    bias: bool = False
    parallel: Literal["column", "row", "replicated"] = "replicated"


class LinearModule(nn.Module):
    """y = x W^T + b; a row-parallel one all-reduces the partial products before the bias."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, reduce: bool) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        if not self.reduce:
            return linear(x, self.weight, self.bias)
        y = ctx.comm.all_reduce(linear(x, self.weight))
        return y + self.bias if self.bias is not None else y


class Linear(LayerKind):
    name = "linear"
    summary = "y = x W^T + b with parallel: column | row | replicated"
    Args = LinearArgs

    def params(self, args: LinearArgs) -> list[ParamDecl]:
        shape = (args.out_dim, args.in_dim)
        if args.parallel == "column":
            return [
                column("weight", shape, args.out_dim, 1),
                column("bias", (args.out_dim,), args.out_dim, 1).when(args.bias),
            ]
        weight = row("weight", shape, args.in_dim, 1) if args.parallel == "row" else replicated("weight", shape)
        return [weight, replicated("bias", (args.out_dim,)).when(args.bias)]

    def module(self, args: LinearArgs, shard: Shard) -> nn.Module:
        return LinearModule(reduce=args.parallel == "row")
