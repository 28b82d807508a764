"""Causal self-attention: fused QKV (GQA-aware TP), optional q/k norm, rope, paged KV cache."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

import minisgl_kernels as kernels

from ..config.rope import RopeConfig
from .context import CacheLayout, ForwardBatch
from .params import ParamDecl, Segment, Sharded, merged_column, replicated, row
from .qk_norm import QKNorm, QKNormScope, QKNormType, qk_norm_params
from .registry import LayerArgs, LayerKind
from .rotary import Rotary
from .shard import Shard
from .tp_linear import ColumnLinear, RowLinear


class AttentionArgs(LayerArgs):
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    rope: RopeConfig | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # normalise q and k before rope (Qwen3, Gemma 3, OLMo 2, StableLM); see qk_norm.py
    qk_norm_type: QKNormType = "rmsnorm"  # or layernorm
    qk_norm_scope: QKNormScope = "head"  # head (shared weight) | per_head (own weights) | full (whole projection)
    qk_norm_bias: bool = False  # layernorm with a bias
    qk_norm_eps: float = 1e-6
    qk_norm_offset: float = 0.0
    qk_norm_cast_before_weight: bool = True  # False: Gemma-style multiply in float32
    scale: float | None = None  # softmax scale; default head_dim ** -0.5
    window: int | None = None  # sliding window (keys with pos > q_pos - window)
    softcap: float | None = None  # attention logit soft-cap
    sinks: bool = Field(
        False, description="Attention sinks: a learned logit per query head joins the softmax denominator"
    )

    @model_validator(mode="after")
    def _gqa(self) -> AttentionArgs:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be at least 1 (or null), got {self.window}")
        return self


def qkv_segments(args: AttentionArgs) -> tuple[Segment, ...]:
    return (
        Segment("q heads", args.heads, args.head_dim),
        Segment("kv heads", args.kv_heads, args.head_dim, "replicate"),
        Segment("kv heads", args.kv_heads, args.head_dim, "replicate"),
    )


class AttentionModule(nn.Module):
    sinks: torch.Tensor | None  # [local q heads]
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    q_norm_bias: torch.Tensor | None
    k_norm_bias: torch.Tensor | None

    def __init__(self, args: AttentionArgs, shard: Shard) -> None:
        super().__init__()
        self.split = list(shard.split("qkv.weight"))  # local q | k | v rows
        self.head_dim = args.head_dim
        self.q_local, self.kv_local = self.split[0] // args.head_dim, self.split[1] // args.head_dim
        self.scale = args.scale if args.scale is not None else args.head_dim**-0.5
        self.window, self.softcap = args.window, args.softcap
        self._opts: kernels.AttentionOptions | None = None
        self.qkv = ColumnLinear()
        self.o = RowLinear()
        self.rotary = Rotary(args.rope, args.head_dim) if args.rope is not None else None
        qkv = shard.decl("qkv.weight").rank_pieces(shard.tp.size, shard.tp.rank)
        first_q, first_kv = qkv[0][0] // args.head_dim, (qkv[1][0] - args.heads * args.head_dim) // args.head_dim
        norm = (
            args.qk_norm_type,
            args.qk_norm_scope,
            args.qk_norm_eps,
            args.qk_norm_offset,
            args.qk_norm_cast_before_weight,
        )
        self.norm_q = QKNorm(*norm, first_q, self.q_local, shard.tp.size)
        self.norm_k = QKNorm(*norm, first_kv, self.kv_local, shard.tp.size)
        self.cache_index = -1  # set by the graph builder

    def _options(self) -> kernels.AttentionOptions:
        """The kernels' options, built once (again when the sinks tensor is replaced: load, move)."""
        if self._opts is None or self._opts.sinks is not self.sinks:
            self._opts = kernels.AttentionOptions(self.scale, self.window, self.softcap, self.sinks)
        return self._opts

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        t = x.shape[0]
        opts = self._options()
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.reshape(t, self.q_local, self.head_dim)
        k = k.reshape(t, self.kv_local, self.head_dim)
        v = v.reshape(t, self.kv_local, self.head_dim)
        has_norm = self.q_norm is not None and self.k_norm is not None
        # plain per-head RMSNorm (one shared weight, no bias) rides inside the fused rope launch
        fuse_norm = (
            has_norm
            and self.rotary is not None
            and self.q_norm_bias is None
            and self.norm_q.kind == "rmsnorm"
            and self.norm_q.scope == "head"
        )
        if has_norm and not fuse_norm:
            q = self.norm_q(q, self.q_norm, self.q_norm_bias, ctx)
            k = self.norm_k(k, self.k_norm, self.k_norm_bias, ctx)
        k_cache, v_cache = ctx.kv.k[self.cache_index], ctx.kv.v[self.cache_index]
        if self.rotary is not None:  # q/k norm, rope in place on q and k, and the KV store: one launch
            n = self.norm_q
            norm = None
            if fuse_norm and self.q_norm is not None and self.k_norm is not None:
                norm = kernels.HeadNorm(self.q_norm, self.k_norm, n.eps, n.offset, n.cast_before_weight)
            store = kernels.KVStore(v, k_cache, v_cache, ctx.out_slots)
            self.rotary(q, k, ctx.positions, store=store, norm=norm)
        else:
            kernels.store_kv(k, v, k_cache, v_cache, ctx.out_slots)
        if ctx.is_decode and ctx.kv_slots is None:  # slots read from the request table (CUDA graphs)
            assert ctx.req_to_token is not None and ctx.req_rows is not None and ctx.seq_lens is not None
            o = kernels.decode_attention_paged(
                q,
                k_cache,
                v_cache,
                ctx.req_to_token,
                ctx.req_rows,
                ctx.seq_lens,
                opts=opts,
            )
        elif ctx.is_decode:
            assert ctx.kv_indptr is not None and ctx.kv_slots is not None
            o = kernels.decode_attention(
                q,
                k_cache,
                v_cache,
                ctx.kv_indptr,
                ctx.kv_slots,
                opts=opts,
            )
        else:
            o = kernels.extend_attention(
                q.contiguous(),
                k.contiguous(),
                v.contiguous(),
                ctx.cu_seqlens_q,
                k_cache,
                v_cache,
                ctx.prefix_indptr,
                ctx.prefix_slots,
                opts=opts,
                max_seqlen_q=ctx.max_seqlen_q,
            )
        return self.o(o.reshape(t, self.split[0]), ctx.comm)


class Attention(LayerKind):
    name = "attention"
    summary = "causal GQA self-attention with fused qkv, rope, optional q/k norm, window, soft-cap"
    Args = AttentionArgs
    uses_kv_cache = True

    def params(self, args: AttentionArgs) -> list[ParamDecl]:
        qkv_rows = (args.heads + 2 * args.kv_heads) * args.head_dim
        segs = qkv_segments(args)
        return [
            merged_column("qkv.weight", (qkv_rows, args.hidden), segs, "qkv"),
            merged_column("qkv.bias", (qkv_rows,), segs, "qkv").when(args.qkv_bias),
            row("o.weight", (args.hidden, args.heads * args.head_dim), args.heads, args.head_dim),
            replicated("o.bias", (args.hidden,)).when(args.o_bias),
            ParamDecl("sinks", (args.heads,), Sharded(0, (Segment("q heads", args.heads, 1),)), "column").when(
                args.sinks
            ),
            *qk_norm_params(
                args.qk_norm, args.qk_norm_scope, args.qk_norm_bias, args.heads, args.kv_heads, args.head_dim
            ),
        ]

    def cache_layout(self, args: AttentionArgs, tp: int) -> CacheLayout:
        kv_local = qkv_segments(args)[1].local_units(tp)
        return CacheLayout((kv_local, args.head_dim), (kv_local, args.head_dim))

    def module(self, args: AttentionArgs, shard: Shard) -> nn.Module:
        return AttentionModule(args, shard)
