"""Multi-head latent attention (MLA): low-rank q, one compressed latent + rope key cached per token.

Per token: ``q = q_b(q_a_norm(q_a(x)))`` (or ``q(x)`` without a q rank), split per head into
a no-rope part (``nope_dim``) and a rope part (``rope_dim``); ``kv_a(x)`` gives the latent
``c`` (``kv_rank``, normalised by ``kv_a_norm``) and one rope key shared by every head;
``kv_b(c)`` would give each head's no-rope key and its value (``v_dim``). Softmax over
``(q_nope . k_nope + q_rope . k_rope) * scale``.

The KV cache holds only ``[c | rotated rope key]`` per token (``kv_rank + rope_dim``
numbers per layer, the same on every rank). Attention runs in latent space: the query's
no-rope part is multiplied by the key half of ``kv_b`` (absorbed), scores are taken
against the cached vectors, and the weighted latent is mapped to each head's value by the
value half of ``kv_b`` (``minisgl_kernels.mla_reference``).

``rope_interleave``: the rope features of q and k are interleaved pairs (x0, x1), (x2, x3),
... (transformers' ``rope_interleave``); they are de-interleaved (evens, then odds) before
the usual rotate-half rope, which is what transformers computes.

Tensor parallelism splits heads (``q``/``q_b``, ``kv_b`` rows, ``o`` columns); ``q_a``,
``kv_a`` and their norms are replicated, and so is the cache.
"""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

import minisgl_kernels as kernels
from minisgl_kernels import mla_reference

from ..config.rope import RopeConfig
from .context import CacheLayout, ForwardBatch
from .params import ParamDecl, column, replicated, row
from .registry import LayerArgs, LayerKind
from .rotary import Rotary
from .shard import Shard
from .tp_linear import ColumnLinear, RowLinear


class LatentAttentionArgs(LayerArgs):
    hidden: PositiveInt
    heads: PositiveInt
    q_rank: PositiveInt | None = Field(
        None, description="Rank of the low-rank q (q_a -> q_a_norm -> q_b); null: one q projection"
    )
    kv_rank: PositiveInt = Field(description="Width of the compressed latent cached per token (kv_lora_rank)")
    nope_dim: PositiveInt = Field(description="Per-head q/k features without rope (qk_nope_head_dim)")
    rope_dim: PositiveInt = Field(description="Per-head q features with rope, and the shared rope key's width")
    v_dim: PositiveInt = Field(description="Per-head value width (v_head_dim)")
    rope: RopeConfig | None = None
    rope_interleave: bool = Field(
        False, description="The rope features of q and k are stored as interleaved pairs (x0, x1), (x2, x3), ..."
    )
    eps: float = Field(1e-6, description="Epsilon of q_a_norm and kv_a_norm (RMSNorm)")
    bias: bool = Field(False, description="Biases on q_a, kv_a and the output projection")
    scale: float | None = Field(None, description="Softmax scale; null: (nope_dim + rope_dim) ** -0.5")

    @model_validator(mode="after")
    def _even_rope(self) -> LatentAttentionArgs:
        if self.rope_dim % 2:
            raise ValueError(f"rope_dim must be even (rope rotates feature pairs), got {self.rope_dim}")
        return self


class LatentAttentionModule(nn.Module):
    q: nn.Module
    q_a: nn.Module
    q_b: nn.Module
    q_a_norm: torch.Tensor | None
    kv_a_norm: torch.Tensor
    kv_b: nn.Module

    def __init__(self, args: LatentAttentionArgs, shard: Shard) -> None:
        super().__init__()
        self.q_rank, self.kv_rank = args.q_rank, args.kv_rank
        self.nope, self.rope_dim, self.v_dim = args.nope_dim, args.rope_dim, args.v_dim
        self.heads_local = shard.split("kv_b.weight")[0] // (args.nope_dim + args.v_dim)
        self.eps, self.interleave = args.eps, args.rope_interleave
        self.scale = args.scale if args.scale is not None else (args.nope_dim + args.rope_dim) ** -0.5
        self.q, self.q_a, self.q_b = ColumnLinear(), ColumnLinear(), ColumnLinear()
        self.kv_a, self.kv_b = ColumnLinear(), ColumnLinear()
        for bias_free in (self.q, self.q_b, self.kv_b):  # no bias declared for these
            bias_free.register_parameter("bias", None)
        self.o = RowLinear()
        self.rotary = Rotary(args.rope, args.rope_dim) if args.rope is not None else None
        self.cache_index = -1  # set by the graph builder

    def _deinterleave(self, x: torch.Tensor) -> torch.Tensor:
        """[..., (d/2, 2)] pairs -> [..., evens | odds] (a copy)."""
        if not self.interleave:
            return x.contiguous()
        return x.unflatten(-1, (self.rope_dim // 2, 2)).transpose(-1, -2).flatten(-2).contiguous()

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        t, h = x.shape[0], self.heads_local
        q = self.q(x) if self.q_rank is None else self.q_b(kernels.rmsnorm(self.q_a(x), self.q_a_norm, self.eps))
        q_nope, q_rope = q.view(t, h, self.nope + self.rope_dim).split([self.nope, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_a(x).split([self.kv_rank, self.rope_dim], dim=-1)
        latent = kernels.rmsnorm(latent.contiguous(), self.kv_a_norm, self.eps)
        q_rope = self._deinterleave(q_rope)
        k_rope = self._deinterleave(k_rope).unsqueeze(1)
        if self.rotary is not None:
            self.rotary(q_rope, k_rope, ctx.positions)
        cache = ctx.kv.k[self.cache_index]
        mla_reference.store_latent(torch.cat([latent, k_rope[:, 0]], dim=-1), cache, ctx.out_slots)
        w = self.kv_b.weight.view(h, self.nope + self.v_dim, self.kv_rank)
        w_k, w_v = w[:, : self.nope], w[:, self.nope :]  # [h, nope, rank], [h, v, rank]
        q_latent = torch.einsum("thn,hnr->thr", q_nope, w_k)
        q_full = torch.cat([q_latent, q_rope], dim=-1)
        if ctx.is_decode and ctx.kv_slots is None:  # slots from the request table (CUDA graphs)
            assert ctx.req_to_token is not None and ctx.req_rows is not None and ctx.seq_lens is not None
            o = mla_reference.latent_decode_attention_paged(
                q_full, cache, ctx.req_to_token, ctx.req_rows, ctx.seq_lens, value_dim=self.kv_rank, scale=self.scale
            )
        elif ctx.is_decode:
            assert ctx.kv_indptr is not None and ctx.kv_slots is not None
            o = mla_reference.latent_decode_attention(
                q_full, cache, ctx.kv_indptr, ctx.kv_slots, value_dim=self.kv_rank, scale=self.scale
            )
        else:
            o = mla_reference.latent_extend_attention(
                q_full,
                cache,
                ctx.cu_seqlens_q,
                ctx.prefix_indptr,
                ctx.prefix_slots,
                ctx.out_slots,
                value_dim=self.kv_rank,
                scale=self.scale,
            )
        out = torch.einsum("thr,hvr->thv", o, w_v)
        return self.o(out.reshape(t, h * self.v_dim), ctx.comm)


class LatentAttention(LayerKind):
    name = "latent_attention"
    summary = "multi-head latent attention: low-rank q and kv, decoupled rope key, compressed KV cache"
    Args = LatentAttentionArgs
    uses_kv_cache = True
    graph_capturable = False  # the torch reference's cache store masks on the host side (no Triton kernel yet)

    def params(self, args: LatentAttentionArgs) -> list[ParamDecl]:
        h, qk = args.heads, args.nope_dim + args.rope_dim
        lora = args.q_rank is not None
        q_rank = args.q_rank or 1
        return [
            column("q.weight", (h * qk, args.hidden), h, qk).when(not lora),
            replicated("q_a.weight", (q_rank, args.hidden)).when(lora),
            replicated("q_a.bias", (q_rank,)).when(lora and args.bias),
            replicated("q_a_norm", (q_rank,)).when(lora),
            column("q_b.weight", (h * qk, q_rank), h, qk).when(lora),
            replicated("kv_a.weight", (args.kv_rank + args.rope_dim, args.hidden)),
            replicated("kv_a.bias", (args.kv_rank + args.rope_dim,)).when(args.bias),
            replicated("kv_a_norm", (args.kv_rank,)),
            column("kv_b.weight", (h * (args.nope_dim + args.v_dim), args.kv_rank), h, args.nope_dim + args.v_dim),
            row("o.weight", (args.hidden, h * args.v_dim), h, args.v_dim),
            replicated("o.bias", (args.hidden,)).when(args.bias),
        ]

    def cache_layout(self, args: LatentAttentionArgs, tp: int) -> CacheLayout:
        return CacheLayout((args.kv_rank + args.rope_dim,), (0,))

    def module(self, args: LatentAttentionArgs, shard: Shard) -> nn.Module:
        return LatentAttentionModule(args, shard)
