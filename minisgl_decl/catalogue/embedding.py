"""Vocab-parallel token embedding and LM head."""

from __future__ import annotations

import torch
from pydantic import PositiveInt
from torch import nn
from torch.nn import functional as F

from .context import ForwardBatch
from .params import ParamDecl, vocab
from .registry import LayerArgs, LayerKind
from .shard import Shard
from .tp_linear import linear


class EmbeddingArgs(LayerArgs):
    vocab: PositiveInt
    dim: PositiveInt
    scale: float | None = None  # multiply the looked-up rows (Gemma: sqrt(hidden))


class VocabEmbedding(nn.Module):
    weight: torch.Tensor

    def __init__(self, args: EmbeddingArgs, shard: Shard) -> None:
        super().__init__()
        (self.rows,) = shard.split("weight")
        self.start = shard.start("weight")
        self.scale = args.scale

    def forward(self, tokens: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        if ctx.comm.size == 1:
            out = F.embedding(tokens, self.weight)
        else:
            local = tokens - self.start
            mine = (local >= 0) & (local < self.rows)
            out = F.embedding(torch.where(mine, local, 0), self.weight)
            out = ctx.comm.all_reduce(out * mine.unsqueeze(-1).to(out.dtype))
        if self.scale is not None:
            out = out * torch.tensor(self.scale, dtype=out.dtype)
        return out


class Embedding(LayerKind):
    name = "embedding"
    summary = "token embedding table, vocab-parallel (rows split between ranks)"
    Args = EmbeddingArgs

    def params(self, args: EmbeddingArgs) -> list[ParamDecl]:
        return [vocab("weight", (args.vocab, args.dim), args.vocab)]

    def module(self, args: EmbeddingArgs, shard: Shard) -> nn.Module:
        return VocabEmbedding(args, shard)


class LMHeadArgs(LayerArgs):
    vocab: PositiveInt
    dim: PositiveInt
    bias: bool = False


class VocabLMHead(nn.Module):
    """Logits for the rows in `ctx.logits_indices` (all rows if None), gathered over ranks."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, args: LMHeadArgs) -> None:
        super().__init__()
        self.vocab = args.vocab

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        if ctx.logits_indices is not None:
            x = x.index_select(0, ctx.logits_indices)
        logits = ctx.comm.all_gather_last_dim(linear(x, self.weight, self.bias))
        return logits[..., : self.vocab]


class LMHead(LayerKind):
    name = "lm_head"
    summary = "output projection to the vocabulary, vocab-parallel, logits gathered"
    Args = LMHeadArgs

    def params(self, args: LMHeadArgs) -> list[ParamDecl]:
        return [
            vocab("weight", (args.vocab, args.dim), args.vocab),
            vocab("bias", (args.vocab,), args.vocab).when(args.bias),
        ]

    def module(self, args: LMHeadArgs, shard: Shard) -> nn.Module:
        return VocabLMHead(args)
