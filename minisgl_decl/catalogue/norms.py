"""RMSNorm (fusable with a preceding residual add) and LayerNorm."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn import functional as F

import minisgl_kernels as kernels

from .context import ForwardBatch
from .params import ParamDecl, replicated
from .registry import LayerArgs, LayerKind
from .shard import Shard


class RMSNormArgs(LayerArgs):
    dim: PositiveInt
    eps: float = 1e-6
    offset: float = 0.0  # weight factor is (offset + w): Gemma's `1 + w`
    cast_before_weight: bool = True  # HF Llama rounds before the weight; Gemma multiplies in fp32


class RMSNorm(nn.Module):
    weight: torch.Tensor

    def __init__(self, args: RMSNormArgs) -> None:
        super().__init__()
        self.eps = args.eps
        self.offset = args.offset
        self.cast_before_weight = args.cast_before_weight

    def forward(self, x: torch.Tensor, ctx: ForwardBatch | None = None) -> torch.Tensor:
        return kernels.rmsnorm(x, self.weight, self.eps, offset=self.offset, cast_before_weight=self.cast_before_weight)

    def forward_add(
        self, x: torch.Tensor, residual: torch.Tensor, ctx: ForwardBatch | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual) in one pass."""
        return kernels.add_rmsnorm(
            x, residual, self.weight, self.eps, offset=self.offset, cast_before_weight=self.cast_before_weight
        )


class RMSNormLayer(LayerKind):
    name = "rmsnorm"
    summary = "RMS normalisation over the last dim (weight offset optional); fused with a preceding add"
    Args = RMSNormArgs
    fuses_residual_add = True

    def params(self, args: RMSNormArgs) -> list[ParamDecl]:
        return [replicated("weight", (args.dim,))]

    def module(self, args: RMSNormArgs, shard: Shard) -> nn.Module:
        return RMSNorm(args)


class LayerNormArgs(LayerArgs):
    dim: PositiveInt
    eps: float = 1e-5
    bias: bool = True


class LayerNorm(nn.Module):
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, args: LayerNormArgs) -> None:
        super().__init__()
        self.eps = args.eps

    def forward(self, x: torch.Tensor, ctx: ForwardBatch | None = None) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class LayerNormLayer(LayerKind):
    name = "layernorm"
    summary = "LayerNorm over the last dim, with optional bias"
    Args = LayerNormArgs

    def params(self, args: LayerNormArgs) -> list[ParamDecl]:
        return [replicated("weight", (args.dim,)), replicated("bias", (args.dim,)).when(args.bias)]

    def module(self, args: LayerNormArgs, shard: Shard) -> nn.Module:
        return LayerNorm(args)
