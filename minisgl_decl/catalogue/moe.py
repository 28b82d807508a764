"""Routed mixture of experts: softmax router, top-k, gated expert MLPs (Mixtral, Qwen3-MoE);
optionally a router bias, expert biases and a clamped / offset / sloped gated activation
(GPT-OSS: ``(clamp(u) + 1) * g * sigmoid(1.702 g)``).

Tensor parallelism shards every expert like a dense gated MLP (each rank holds a slice of
every expert's ffn), so the router and the routing are replicated and one all-reduce
finishes the block.
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt, model_validator
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
    router_bias: bool = Field(False, description="The router is a linear layer with a bias")
    expert_bias: bool = Field(False, description="A bias on each expert's gate|up and down projections")
    act_alpha: float = Field(1.0, description="Slope of silu's sigmoid: g * sigmoid(act_alpha * g)")
    act_limit: float | None = Field(
        None, description="Clamp g to <= limit and u to [-limit, limit] before the activation; null: no clamp"
    )
    up_offset: float = Field(0.0, description="The gated product is act(g) * (u + up_offset)")

    @model_validator(mode="after")
    def _k(self) -> MoEArgs:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        if self.act_alpha != 1.0 and self.act != "silu":
            raise ValueError(f"act_alpha (the sigmoid slope) applies to act silu only, got act {self.act!r}")
        if not (self.act_alpha > 0 and (self.act_limit is None or self.act_limit > 0)):
            raise ValueError("act_alpha and act_limit must be positive")
        return self


class MoEModule(nn.Module):
    gate_up: torch.Tensor  # [experts, local gate | local up, dim]
    down: torch.Tensor  # [experts, dim, local ffn]
    gate_up_bias: torch.Tensor | None  # [experts, local gate | local up]
    down_bias: torch.Tensor | None  # [experts, dim] (replicated: added once, after the all-reduce)

    def __init__(self, args: MoEArgs, shard: Shard) -> None:
        super().__init__()
        self.top_k, self.norm = args.top_k, args.norm_topk_prob
        self.split = list(shard.split("gate_up"))  # local gate rows, local up rows of each expert
        self.act = kernel_activation(args.act)
        self.act_opts = (args.act_alpha, args.act_limit, args.up_offset)
        self._opts: kernels.MoEOptions | None = None

    def _options(self) -> kernels.MoEOptions:
        """The kernel's options, built once (again when the bias tensor is replaced: load, move)."""
        if self._opts is None or self._opts.gate_up_bias is not self.gate_up_bias:
            alpha, limit, offset = self.act_opts
            self._opts = kernels.MoEOptions(self.gate_up_bias, alpha, limit, offset)
        return self._opts

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        probs = F.softmax(F.linear(x, self.router.weight, self.router.bias), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.norm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        opts = self._options()
        # grouped GEMMs over the routed experts, the gate|up bias and activation options in
        # the epilogue (Triton on CUDA; the per-expert torch loop elsewhere)
        out = ctx.comm.all_reduce(kernels.fused_moe(x, self.gate_up, self.down, weights, chosen, self.act, opts))
        if self.down_bias is not None:  # sum_j w[t, j] * down_bias[e_j]
            out = out + (weights.unsqueeze(-1) * self.down_bias[chosen]).sum(dim=1)
        return out


class MoE(LayerKind):
    name = "moe"
    summary = "routed experts: softmax router, top-k (optionally renormalised), gated expert MLPs"
    Args = MoEArgs

    def params(self, args: MoEArgs) -> list[ParamDecl]:
        activation(args.act)
        e, d, f = args.experts, args.dim, args.ffn
        gate_up_rows = (Segment("gate rows", f, 1), Segment("up rows", f, 1))
        return [
            replicated("router.weight", (e, d)),
            replicated("router.bias", (e,)).when(args.router_bias),
            expert_stacked("gate_up", (e, 2 * f, d), 1, gate_up_rows),
            expert_stacked("down", (e, d, f), 2, (Segment("ffn columns", f, 1),)),
            expert_stacked("gate_up_bias", (e, 2 * f), 1, gate_up_rows).when(args.expert_bias),
            replicated("down_bias", (e, d)).when(args.expert_bias),
        ]

    def module(self, args: MoEArgs, shard: Shard) -> nn.Module:
        return MoEModule(args, shard)
