"""Stateless element-wise layers."""

from __future__ import annotations

import torch
from torch import nn

from .context import ForwardBatch
from .params import ParamDecl
from .registry import LayerArgs, LayerKind
from .shard import Shard


class SoftCapArgs(LayerArgs):
    cap: float | None = None  # None: identity


class TanhSoftCap(nn.Module):
    def __init__(self, cap: float | None) -> None:
        super().__init__()
        self.cap = cap

    def forward(self, x: torch.Tensor, ctx: ForwardBatch | None = None) -> torch.Tensor:
        if self.cap is None:
            return x
        return torch.tanh(x / self.cap) * self.cap


class SoftCap(LayerKind):
    name = "softcap"
    summary = "cap * tanh(x / cap) (Gemma 2 final logits); identity when cap is null"
    Args = SoftCapArgs

    def params(self, args: SoftCapArgs) -> list[ParamDecl]:
        return []

    def module(self, args: SoftCapArgs, shard: Shard) -> nn.Module:
        return TanhSoftCap(args.cap)
