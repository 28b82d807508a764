"""A general linear layer with an explicit tensor-parallel role."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn import functional as F

from .context import ForwardBatch
from .params import ParamDecl, TPInfo, column, replicated, row
from .registry import LayerArgs, LayerKind
from .tp_linear import ColumnLinear, RowLinear, empty_param


class LinearArgs(LayerArgs):
    in_dim: PositiveInt
    out_dim: PositiveInt
    bias: bool = False
    parallel: Literal["column", "row", "replicated"] = "replicated"


class ReplicatedLinear(nn.Module):
    def __init__(self, args: LinearArgs) -> None:
        super().__init__()
        self.weight = empty_param(args.out_dim, args.in_dim)
        self.bias = empty_param(args.out_dim) if args.bias else None

    def forward(self, x: torch.Tensor, ctx: ForwardBatch | None = None) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Column(ColumnLinear):
    def forward(self, x: torch.Tensor, ctx: ForwardBatch | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class _Row(RowLinear):
    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, ctx.comm)


class Linear(LayerKind):
    name = "linear"
    summary = "y = x W^T + b with parallel: column | row | replicated"
    Args = LinearArgs
    param_names = ("weight", "bias")

    def params(self, args: LinearArgs) -> list[ParamDecl]:
        if args.parallel == "column":
            decls = [column("weight", (args.out_dim, args.in_dim), args.out_dim, 1)]
            return decls + ([column("bias", (args.out_dim,), args.out_dim, 1)] if args.bias else [])
        if args.parallel == "row":
            decls = [row("weight", (args.out_dim, args.in_dim), args.in_dim, 1)]
            return decls + ([replicated("bias", (args.out_dim,))] if args.bias else [])
        decls = [replicated("weight", (args.out_dim, args.in_dim))]
        return decls + ([replicated("bias", (args.out_dim,))] if args.bias else [])

    def build(self, args: LinearArgs, tp: TPInfo) -> nn.Module:
        if args.parallel == "column":
            return _Column(args.in_dim, args.out_dim // tp.size, args.bias)
        if args.parallel == "row":
            return _Row(args.in_dim // tp.size, args.out_dim, args.bias)
        return ReplicatedLinear(args)
