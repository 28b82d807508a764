"""The q/k normalisation of `attention` (before rope): which norm, over what, with which weights.

`qk_norm_scope` says what one normalisation covers and what its weight is:

- ``head``: each head over ``head_dim``, one weight ``[head_dim]`` shared by all heads
  (Qwen3, Gemma 3, Phi's ``qk_layernorm``);
- ``per_head``: each head over ``head_dim``, each head its own weight: ``[heads, head_dim]``
  (StableLM's ``qk_layernorm``). Tiny, so replicated; a rank uses its own heads' rows;
- ``full``: the whole projection (all heads x head_dim) at once, weight
  ``[heads * head_dim]`` sharded like the q (or k) rows (OLMo 2). Under TP the sum of
  squares (LayerNorm: and the sum) is all-reduced; dividing by the all-reduced element
  count keeps the mean exact when kv heads are replicated over ranks.

`qk_norm_type` is ``rmsnorm`` (with ``qk_norm_offset`` / ``qk_norm_cast_before_weight``) or
``layernorm`` (with ``qk_norm_bias``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

import minisgl_kernels as kernels

from .context import ForwardBatch
from .params import ParamDecl, Segment, merged_column, replicated

QKNormType = Literal["rmsnorm", "layernorm"]
QKNormScope = Literal["head", "per_head", "full"]


def qk_norm_params(
    on: bool, scope: QKNormScope, bias: bool, heads: int, kv_heads: int, head_dim: int
) -> list[ParamDecl]:
    """`q_norm`, `k_norm` (weights) and `q_norm_bias`, `k_norm_bias` for these settings."""
    decls = []
    for name, n, mode in (("q_norm", heads, "split"), ("k_norm", kv_heads, "replicate")):
        if scope == "full":
            seg = (Segment(f"{name[0]} heads", n, head_dim, mode),)  # type: ignore[arg-type]
            w, b = (
                merged_column(name, (n * head_dim,), seg, "column"),
                merged_column(f"{name}_bias", (n * head_dim,), seg, "column"),
            )
        elif scope == "per_head":
            w, b = replicated(name, (n, head_dim)), replicated(f"{name}_bias", (n, head_dim))
        else:
            w, b = replicated(name, (head_dim,)), replicated(f"{name}_bias", (head_dim,))
        decls += [w.when(on), b.when(on and bias)]
    return decls


class QKNorm:
    """Applies one of q/k's norms to x [T, local heads, head_dim]."""

    def __init__(
        self,
        kind: QKNormType,
        scope: QKNormScope,
        eps: float,
        offset: float,
        cast_before_weight: bool,
        first_head: int,
        local_heads: int,
        tp: int,
    ) -> None:
        self.kind, self.scope, self.eps = kind, scope, eps
        self.offset, self.cast_before_weight = offset, cast_before_weight
        self.rows = slice(first_head, first_head + local_heads)
        self.tp = tp

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, ctx: ForwardBatch) -> torch.Tensor:
        if self.scope == "full":
            return self._full(x, w, b, ctx)
        if self.scope == "per_head":
            w, b = w[self.rows], (b[self.rows] if b is not None else None)
        if self.kind == "layernorm":
            if self.scope == "head":
                return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)
            y = F.layer_norm(x, (x.shape[-1],), None, None, self.eps) * w
            return y + b if b is not None else y
        if self.scope == "head":
            return kernels.rmsnorm(x, w, self.eps, offset=self.offset, cast_before_weight=self.cast_before_weight)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self._scale(y, w, x.dtype)

    def _scale(self, y: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.cast_before_weight:
            return y.to(dtype) * (w + self.offset)
        return (y * (w.float() + self.offset)).to(dtype)

    def _full(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, ctx: ForwardBatch) -> torch.Tensor:
        t, h, d = x.shape
        xf = x.float().reshape(t, h * d)
        count = float(h * d * self.tp)  # every rank's width: replicated heads counted as often as their sums
        if self.kind == "layernorm":
            mean = self._sum(xf.sum(-1, keepdim=True), ctx) / count
            xf = xf - mean
        var = self._sum(xf.pow(2).sum(-1, keepdim=True), ctx) / count
        y = xf * torch.rsqrt(var + self.eps)
        if self.kind == "layernorm":
            y = y * w + (b if b is not None else 0.0)
            return y.to(x.dtype).reshape(t, h, d)
        return self._scale(y, w, x.dtype).reshape(t, h, d)

    def _sum(self, part: torch.Tensor, ctx: ForwardBatch) -> torch.Tensor:
        return ctx.comm.all_reduce(part) if self.tp > 1 else part
