"""Launchers for the fused-MoE grouped GEMMs (see moe_jit.py, moe_align.py)."""

from __future__ import annotations

import os
from typing import Any

import torch
import triton

from minisgl_kernels._util import cdiv, interpreting
from minisgl_kernels.buckets import block_m_for, pairs_bucket
from minisgl_kernels.moe_align import moe_align
from minisgl_kernels.moe_jit import moe_down_kernel, moe_gate_up_kernel
from minisgl_kernels.options import MoEOptions

AUTOTUNE_ENV = "MINISGL_KERNELS_AUTOTUNE"


def _config(n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=warps, num_stages=stages)


# first entry: the untuned default (MINISGL_KERNELS_AUTOTUNE=0)
_CONFIGS = [
    _config(64, 64, 4, 4),
    _config(32, 128, 4, 4),
    _config(64, 128, 4, 3),
    _config(128, 64, 4, 3),
    _config(128, 64, 8, 4),
    _config(128, 128, 8, 2),  # 3 stages exceed the shared memory at BLOCK_M 64
]
_KEY = ["BLOCK_M", "ffn", "dim", "pairs_bucket", "ACT", "GLU_OPTS", "HAS_BIAS", "CLAMP", "DOT_PRECISION"]
_gate_up_tuned = triton.autotune(_CONFIGS, key=_KEY)(moe_gate_up_kernel)
_down_tuned = triton.autotune(_CONFIGS, key=["BLOCK_M", "dim", "ffn", "pairs_bucket", "DOT_PRECISION"])(moe_down_kernel)
INTERPRET_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 16}


def _fixed(dtype: torch.dtype) -> dict[str, Any] | None:
    if interpreting():
        return INTERPRET_CONFIG
    if dtype == torch.float32:
        return {"BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    if os.environ.get(AUTOTUNE_ENV, "1") == "0":
        c = _CONFIGS[0]
        return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
    return None


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "ieee"
    return "upcast" if interpreting() else "tf32"  # "tf32" is ignored for 16-bit operands


def fused_moe_triton(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    act: str,
    out: torch.Tensor,
    opts: MoEOptions | None = None,
    *,
    block_m: int | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """``out [T, dim]`` = sum over each token's top_k experts of weight * expert MLP(x)."""
    num_tokens, dim = x.shape
    num_experts, ffn = gate_up.shape[0], down.shape[2]
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    if num_pairs == 0:
        return
    bm = block_m or block_m_for(num_pairs, num_experts)
    sorted_pairs, block_expert = moe_align(topk_ids, num_experts, bm)
    blocks = block_expert.shape[0]
    h = torch.empty((num_pairs, ffn), dtype=x.dtype, device=x.device)
    y = torch.empty((num_pairs, dim), dtype=x.dtype, device=x.device)
    weights = topk_weights.reshape(-1)
    prec = _precision(x.dtype)
    bucket = pairs_bucket(num_pairs)
    fixed = config if config is not None else _fixed(x.dtype)
    up_kernel = moe_gate_up_kernel if fixed is not None else _gate_up_tuned
    down_kernel = moe_down_kernel if fixed is not None else _down_tuned
    meta = fixed or {}

    def grid(n: int) -> Any:
        return lambda m: (blocks, cdiv(n, m["BLOCK_N"]))

    o = opts if opts is not None else MoEOptions()
    up_kernel[grid(ffn)](
        x,
        gate_up,
        h,
        o.gate_up_bias if o.gate_up_bias is not None else gate_up,
        sorted_pairs,
        block_expert,
        num_pairs,
        top_k,
        num_experts,
        ffn,
        dim,
        bucket,
        x.stride(0),
        gate_up.stride(0),
        gate_up.stride(1),
        h.stride(0),
        float(o.alpha),
        float(o.limit) if o.limit is not None else 0.0,
        float(o.up_offset),
        ACT=act,
        GLU_OPTS=not o.plain,
        HAS_BIAS=o.gate_up_bias is not None,
        CLAMP=o.limit is not None,
        BLOCK_M=bm,
        DOT_PRECISION=prec,
        **meta,
    )
    down_kernel[grid(dim)](
        h,
        down,
        y,
        sorted_pairs,
        block_expert,
        weights,
        num_pairs,
        num_experts,
        dim,
        ffn,
        bucket,
        h.stride(0),
        down.stride(0),
        down.stride(1),
        y.stride(0),
        BLOCK_M=bm,
        DOT_PRECISION=prec,
        **meta,
    )
    torch.sum(y.view(num_tokens, top_k, dim), dim=1, out=out)
