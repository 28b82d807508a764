"""Causal self-attention: fused QKV (GQA-aware TP), optional q/k norm, rope, paged KV cache."""

from __future__ import annotations

import torch
from pydantic import PositiveInt, model_validator
from torch import nn

import kernels

from ..config.rope import RopeConfig
from .context import ForwardBatch
from .params import ParamDecl, Segment, TPInfo, merged_column, replicated, row
from .registry import LayerArgs, LayerKind
from .rotary import Rotary
from .tp_linear import ColumnLinear, RowLinear, empty_param


class AttentionArgs(LayerArgs):
    hidden: PositiveInt
    heads: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt
    rope: RopeConfig | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before rope (Qwen3, Gemma 3)
    qk_norm_eps: float = 1e-6
    qk_norm_offset: float = 0.0
    qk_norm_cast_before_weight: bool = True  # False: Gemma-style multiply in float32
    scale: float | None = None  # softmax scale; default head_dim ** -0.5
    window: int | None = None  # sliding window (keys with pos > q_pos - window)
    softcap: float | None = None  # attention logit soft-cap

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
    def __init__(self, args: AttentionArgs, tp: TPInfo, q_local: int, kv_local: int) -> None:
        super().__init__()
        self.q_local, self.kv_local, self.head_dim = q_local, kv_local, args.head_dim
        self.scale = args.scale if args.scale is not None else args.head_dim**-0.5
        self.window, self.softcap = args.window, args.softcap
        self.qkv = ColumnLinear(args.hidden, (q_local + 2 * kv_local) * args.head_dim, args.qkv_bias)
        self.o = RowLinear(q_local * args.head_dim, args.hidden, args.o_bias)
        self.rotary = Rotary(args.rope, args.head_dim) if args.rope is not None else None
        self.qk_norm_eps, self.qk_norm_offset = args.qk_norm_eps, args.qk_norm_offset
        self.qk_norm_cast = args.qk_norm_cast_before_weight
        if args.qk_norm:
            self.q_norm = empty_param(args.head_dim)
            self.k_norm = empty_param(args.head_dim)
        self.cache_index = -1  # set by the graph builder

    def forward(self, x: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x).split(
            [self.q_local * self.head_dim, self.kv_local * self.head_dim, self.kv_local * self.head_dim], dim=-1
        )
        q = q.reshape(t, self.q_local, self.head_dim)
        k = k.reshape(t, self.kv_local, self.head_dim)
        v = v.reshape(t, self.kv_local, self.head_dim)
        if hasattr(self, "q_norm"):
            norm = {"offset": self.qk_norm_offset, "cast_before_weight": self.qk_norm_cast}
            q = kernels.rmsnorm(q, self.q_norm, self.qk_norm_eps, **norm)
            k = kernels.rmsnorm(k, self.k_norm, self.qk_norm_eps, **norm)
        if self.rotary is not None:
            q, k = self.rotary(q, k, ctx.positions)
        k_cache, v_cache = ctx.kv.k[self.cache_index], ctx.kv.v[self.cache_index]
        kernels.store_kv(k, v, k_cache, v_cache, ctx.out_slots)
        if ctx.is_decode:
            assert ctx.kv_indptr is not None and ctx.kv_slots is not None
            o = kernels.decode_attention(
                q, k_cache, v_cache, ctx.kv_indptr, ctx.kv_slots,
                scale=self.scale, window=self.window, softcap=self.softcap,
            )
        else:
            o = kernels.extend_attention(
                q.contiguous(), k.contiguous(), v.contiguous(), ctx.cu_seqlens_q, k_cache, v_cache,
                ctx.prefix_indptr, ctx.prefix_slots,
                scale=self.scale, window=self.window, softcap=self.softcap, max_seqlen_q=ctx.max_seqlen_q,
            )
        return self.o(o.reshape(t, self.q_local * self.head_dim), ctx.comm)


class Attention(LayerKind):
    name = "attention"
    summary = "causal GQA self-attention with fused qkv, rope, optional q/k norm, window, soft-cap"
    Args = AttentionArgs
    param_names = ("qkv.weight", "qkv.bias", "o.weight", "o.bias", "q_norm", "k_norm")
    uses_kv_cache = True

    def params(self, args: AttentionArgs) -> list[ParamDecl]:
        qkv_rows = (args.heads + 2 * args.kv_heads) * args.head_dim
        segs = qkv_segments(args)
        decls = [merged_column("qkv.weight", (qkv_rows, args.hidden), segs, "qkv")]
        if args.qkv_bias:
            decls.append(merged_column("qkv.bias", (qkv_rows,), segs, "qkv"))
        decls.append(row("o.weight", (args.hidden, args.heads * args.head_dim), args.heads, args.head_dim))
        if args.o_bias:
            decls.append(replicated("o.bias", (args.hidden,)))
        if args.qk_norm:
            decls += [replicated("q_norm", (args.head_dim,)), replicated("k_norm", (args.head_dim,))]
        return decls

    def build(self, args: AttentionArgs, tp: TPInfo) -> nn.Module:
        segs = qkv_segments(args)
        return AttentionModule(args, tp, segs[0].local_units(tp.size), segs[1].local_units(tp.size))
