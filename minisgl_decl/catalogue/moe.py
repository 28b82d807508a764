"""Routed mixture of experts: a router, top-k, gated expert MLPs (Mixtral, Qwen3-MoE, ...).

Routing options: `scoring` softmax (probabilities over all experts) or sigmoid (an
independent score per expert); `score_bias` adds a learned per-expert bias to the scores
for the choice only (the weights stay the unbiased scores); `groups`/`topk_groups` first
keep the `topk_groups` expert groups whose two best (biased) scores sum highest and choose
the top-k among their experts only; `norm_topk_prob` renormalises the chosen weights;
`routed_scale` multiplies them at the end; `router_bias`: the router is a linear layer with
a bias. Expert options: `expert_bias` (biases on each expert's gate|up and down) and a
clamped / offset / sloped gated activation (GPT-OSS: ``(clamp(u) + 1) * g * sigmoid(1.702 g)``).

Tensor parallelism shards every expert like a dense gated MLP (each rank holds a slice of
every expert's ffn), so the router and the routing are replicated and one all-reduce
finishes the block.
"""

from __future__ import annotations

from typing import Literal

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
    scoring: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="Router scores: softmax over all experts, or an independent sigmoid per expert"
    )
    score_bias: bool = Field(
        False, description="A learned per-expert bias (`router.score_bias`) added to the scores for the choice only"
    )
    groups: PositiveInt = Field(1, description="Expert groups (consecutive experts); a group scores its best two")
    topk_groups: PositiveInt | None = Field(None, description="Groups kept before the top-k choice; null: all groups")
    routed_scale: float = Field(1.0, description="Multiplies the routed experts' weights (after renormalising)")
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
        if self.experts % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide experts ({self.experts})")
        kept = self.topk_groups if self.topk_groups is not None else self.groups
        if kept > self.groups:
            raise ValueError(f"topk_groups ({kept}) cannot exceed groups ({self.groups})")
        if self.groups > 1 and self.experts // self.groups < 2:
            raise ValueError(
                f"a group's score sums its two best experts: groups ({self.groups}) must leave 2 or more experts each"
            )
        if self.top_k > kept * (self.experts // self.groups):
            raise ValueError(
                f"top_k ({self.top_k}) exceeds the experts of the kept groups ({kept} x {self.experts // self.groups})"
            )
        return self


class MoEModule(nn.Module):
    gate_up: torch.Tensor  # [experts, local gate | local up, dim]
    down: torch.Tensor  # [experts, dim, local ffn]
    gate_up_bias: torch.Tensor | None  # [experts, local gate | local up]
    down_bias: torch.Tensor | None  # [experts, dim] (replicated: added once, after the all-reduce)

    def __init__(self, args: MoEArgs, shard: Shard) -> None:
        super().__init__()
        self.top_k, self.norm = args.top_k, args.norm_topk_prob
        self.sigmoid = args.scoring == "sigmoid"
        self.groups = args.groups
        self.topk_groups = args.topk_groups if args.topk_groups is not None else args.groups
        self.routed_scale = args.routed_scale
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

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, top_k] float32, expert ids [T, top_k]) for each token."""
        router_bias = self.router.bias
        if self.sigmoid:  # sigmoid routers score in float32 from the start (as transformers does)
            rb = router_bias.float() if router_bias is not None else None
            scores = torch.sigmoid(F.linear(x.float(), self.router.weight.float(), rb))
        else:
            scores = F.softmax(F.linear(x, self.router.weight, router_bias), dim=-1, dtype=torch.float)
        bias = self.router.score_bias
        choice = scores + bias.float() if bias is not None else scores
        if self.groups > 1 and self.topk_groups < self.groups:
            grouped = choice.view(choice.shape[0], self.groups, -1)
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            kept = torch.topk(group_scores, self.topk_groups, dim=-1)[1]
            mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
            choice = grouped.masked_fill(~mask.unsqueeze(-1), float("-inf")).view_as(choice)
        chosen = torch.topk(choice, self.top_k, dim=-1)[1]
        weights = scores.gather(1, chosen)
        if self.norm:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.routed_scale, chosen

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        weights, chosen = self.route(x)
        weights = weights.to(x.dtype)
        # grouped GEMMs over the routed experts, the gate|up bias and activation options in
        # the epilogue (Triton on CUDA; the per-expert torch loop elsewhere)
        out = kernels.fused_moe(x, self.gate_up, self.down, weights, chosen, self.act, self._options())
        out = ctx.comm.all_reduce(out)
        if self.down_bias is not None:  # sum_j w[t, j] * down_bias[e_j], once (replicated)
            out = out + (weights.unsqueeze(-1) * self.down_bias[chosen]).sum(dim=1)
        return out


class MoE(LayerKind):
    name = "moe"
    summary = "routed experts: softmax or sigmoid router (bias, grouped top-k, scale), gated expert MLPs"
    Args = MoEArgs

    def params(self, args: MoEArgs) -> list[ParamDecl]:
        activation(args.act)
        e, d, f = args.experts, args.dim, args.ffn
        gate_up_rows = (Segment("gate rows", f, 1), Segment("up rows", f, 1))
        return [
            replicated("router.weight", (e, d)),
            replicated("router.score_bias", (e,)).when(args.score_bias),
            replicated("router.bias", (e,)).when(args.router_bias),
            expert_stacked("gate_up", (e, 2 * f, d), 1, gate_up_rows),
            expert_stacked("down", (e, d, f), 2, (Segment("ffn columns", f, 1),)),
            expert_stacked("gate_up_bias", (e, 2 * f), 1, gate_up_rows).when(args.expert_bias),
            replicated("down_bias", (e, d)).when(args.expert_bias),
        ]

    def module(self, args: MoEArgs, shard: Shard) -> nn.Module:
        return MoEModule(args, shard)
