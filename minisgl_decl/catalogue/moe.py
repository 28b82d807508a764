"""Routed mixture of experts: softmax router, top-k, gated expert MLPs (Mixtral, Qwen3-MoE).

Tensor parallelism shards every expert like a dense gated MLP (each rank holds a slice of
every expert's ffn), so the router and the routing are replicated and one all-reduce
finishes the block.
"""

from __future__ import annotations

import torch
from pydantic import PositiveInt, model_validator
from torch import nn
from torch.nn import functional as F

import minisgl_kernels as kernels

from .context import ForwardBatch
from .mlp import activation, kernel_activation
from .params import ParamDecl, Segment, expert_stacked, replicated
from .registry import LayerArgs, LayerKind
from .shard import Shard


class MoEArgs(LayerArgs):
    dim: PositiveInt
    ffn: PositiveInt  # per expert
    experts: PositiveInt
    top_k: PositiveInt
    act: str = "silu"
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum to 1

    @model_validator(mode="after")
    def _k(self) -> MoEArgs:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        return self


class MoEModule(nn.Module):
    gate_up: torch.Tensor  # [experts, local gate | local up, dim]
    down: torch.Tensor  # [experts, dim, local ffn]

    def __init__(self, args: MoEArgs, shard: Shard) -> None:
        super().__init__()
        self.top_k, self.norm = args.top_k, args.norm_topk_prob
        self.split = list(shard.split("gate_up"))  # local gate rows, local up rows of each expert
        self.act = kernel_activation(args.act)

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        probs = F.softmax(F.linear(x, self.router.weight), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.norm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        # grouped GEMMs over the routed experts (Triton on CUDA; the per-expert loop elsewhere)
        out = kernels.fused_moe(x, self.gate_up, self.down, weights.to(x.dtype), chosen, self.act)
        return ctx.comm.all_reduce(out)


class MoE(LayerKind):
    name = "moe"
    summary = "routed experts: softmax router, top-k (optionally renormalised), gated expert MLPs"
    Args = MoEArgs

    def params(self, args: MoEArgs) -> list[ParamDecl]:
        activation(args.act)
        e, d, f = args.experts, args.dim, args.ffn
        return [
            replicated("router.weight", (e, d)),
            expert_stacked("gate_up", (e, 2 * f, d), 1, (Segment("gate rows", f, 1), Segment("up rows", f, 1))),
            expert_stacked("down", (e, d, f), 2, (Segment("ffn columns", f, 1),)),
        ]

    def module(self, args: MoEArgs, shard: Shard) -> nn.Module:
        return MoEModule(args, shard)
