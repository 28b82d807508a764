"""Learned absolute position embeddings: a table indexed by each token's position."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn import functional as F

from .context import ForwardBatch
from .params import ParamDecl, replicated
from .registry import LayerArgs, LayerKind
from .shard import Shard


class PositionEmbeddingArgs(LayerArgs):
    max_positions: PositiveInt
    dim: PositiveInt


class PositionTable(nn.Module):
    weight: torch.Tensor

    def forward(self, tokens: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        """Rows for the batch's positions (`tokens` only gives the call its place in the dataflow)."""
        return F.embedding(ctx.positions, self.weight)


class PositionEmbedding(LayerKind):
    name = "position_embedding"
    summary = "learned absolute position embeddings (GPT-2): row = token position; call it on `tokens`"
    Args = PositionEmbeddingArgs

    def params(self, args: PositionEmbeddingArgs) -> list[ParamDecl]:
        return [replicated("weight", (args.max_positions, args.dim))]

    def module(self, args: PositionEmbeddingArgs, shard: Shard) -> nn.Module:
        return PositionTable()
