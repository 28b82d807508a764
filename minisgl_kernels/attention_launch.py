"""Launchers for the Triton attention kernels (attention_jit.py, decode_jit.py).

Arguments are assumed to have passed ``kernels._checks`` (done by the dispatch in
``minisgl_kernels/__init__.py``). Nothing here reads device data, except ``extend_attention``
when ``max_seqlen_q`` is not given. On CUDA the kernels are autotuned on first use of
each shape class: warm up before capturing a CUDA graph.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton

from minisgl_kernels._util import cdiv, head_dim_block, interpreting, next_pow2
from minisgl_kernels.attention_jit import extend_attention_kernel
from minisgl_kernels.buckets import MAX_SPLITS, default_num_splits, seq_bucket
from minisgl_kernels.decode_fused_jit import decode_fused_kernel
from minisgl_kernels.decode_jit import decode_reduce_kernel, decode_split_kernel
from minisgl_kernels.options import AttentionOptions

LOG2E = 1.4426950408889634


def _score_params(opts: AttentionOptions) -> tuple[float, float]:
    if opts.softcap is None:
        return opts.scale * LOG2E, 0.0
    return opts.scale / opts.softcap, opts.softcap * LOG2E


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32:  # 3xTF32: float32-level accuracy on tensor cores ("ieee" spills badly)
        return "tf32x3"
    return "upcast" if dtype == torch.bfloat16 and interpreting() else "tf32"  # see attention_jit.dot


def _configs(spec: list[tuple[int, ...]], names: tuple[str, ...]) -> list[triton.Config]:
    return [triton.Config(dict(zip(names, c[:-2], strict=True)), num_warps=c[-2], num_stages=c[-1]) for c in spec]


# (BLOCK_M, BLOCK_N, warps, stages), chosen from the sm_90 resource report (no register spills)
_EXTEND_CONFIGS = _configs([(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)], ("BLOCK_M", "BLOCK_N"))
_EXTEND_CONFIGS_D256 = _configs(
    [(64, 64, 8, 3), (64, 32, 8, 3), (128, 32, 8, 2), (64, 32, 4, 2)], ("BLOCK_M", "BLOCK_N")
)
# (BLOCK_N, PREFETCH_SLOTS, warps, stages)
_DECODE_CONFIGS = _configs(
    [
        (bn, pf, w, st)
        for pf in (1, 0)
        for bn, w, st in [(64, 4, 3), (64, 4, 2), (32, 4, 3), (128, 4, 2), (128, 4, 3), (64, 8, 3)]
    ],
    ("BLOCK_N", "PREFETCH_SLOTS"),
)


# Configs follow the feature block BLOCK_D (the head dim padded to a power of two), so a
# padded head dim (80, 96 -> 128; 160..255 -> 256) is tuned among its power of two's configs.
def _prune_extend(configs: list[triton.Config], nargs: dict[str, Any], **kw: Any) -> list[triton.Config]:
    return _EXTEND_CONFIGS_D256 if kw.get("BLOCK_D", nargs.get("BLOCK_D")) == 256 else configs


def _prune_decode(configs: list[triton.Config], nargs: dict[str, Any], **kw: Any) -> list[triton.Config]:
    if kw.get("BLOCK_D", nargs.get("BLOCK_D")) == 256:  # BLOCK_N 128 spills at head_dim 256
        return [c for c in configs if c.kwargs["BLOCK_N"] <= 64]
    return configs


_extend_tuned = triton.autotune(
    _EXTEND_CONFIGS,
    key=["seq_bucket", "HEAD_DIM", "GROUP", "HAS_PREFIX", "SOFTCAP", "WINDOW", "SINKS"],
    prune_configs_by={"early_config_prune": _prune_extend},
)(extend_attention_kernel)
_DECODE_KEY = ["num_splits", "GROUP", "HEAD_DIM", "SOFTCAP", "WINDOW"]
_FUSED_KEY = [*_DECODE_KEY, "SINKS"]
_decode_tuned = triton.autotune(
    _DECODE_CONFIGS,
    key=_DECODE_KEY,
    prune_configs_by={"early_config_prune": _prune_decode},
)(decode_split_kernel)
_fused_tuned = triton.autotune(  # every launch leaves the counters at 0, so tuning runs are safe
    _DECODE_CONFIGS,
    key=_FUSED_KEY,
    prune_configs_by={"early_config_prune": _prune_decode},
)(decode_fused_kernel)
AUTOTUNE_ENV = "MINISGL_KERNELS_AUTOTUNE"
FUSED_DECODE_ENV = "MINISGL_KERNELS_FUSED_DECODE"
FUSED_DECODE_DEFAULT = True
INTERPRET_EXTEND = {"BLOCK_M": 16, "BLOCK_N": 16}
INTERPRET_DECODE = {"BLOCK_N": 16, "PREFETCH_SLOTS": 1}  # tests also run PREFETCH_SLOTS=0


def _fixed(configs: list[triton.Config], dtype: torch.dtype, small: dict[str, int]) -> dict[str, int] | None:
    """Launch parameters that skip autotuning, or None to autotune.

    The interpreter gets small blocks; float32 (a parity-testing dtype, not a fast path)
    gets one small config that compiles quickly; MINISGL_KERNELS_AUTOTUNE=0 takes the
    first config (tests use it to keep GPU compile time down).
    """
    if interpreting():
        return INTERPRET_EXTEND if "BLOCK_M" in small else INTERPRET_DECODE
    if dtype == torch.float32:
        return small
    if os.environ.get(AUTOTUNE_ENV, "1") == "0":
        return {**configs[0].kwargs, "num_warps": configs[0].num_warps, "num_stages": configs[0].num_stages}
    return None


def extend_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    prefix_indptr: torch.Tensor | None,
    prefix_slots: torch.Tensor | None,
    opts: AttentionOptions,
    max_seqlen_q: int | None,
    out: torch.Tensor,
) -> None:
    num_reqs = cu_seqlens_q.shape[0] - 1
    if q.shape[0] == 0 or num_reqs == 0:
        return
    if max_seqlen_q is None:  # host sync; pass it to avoid one
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max().item())
    if max_seqlen_q <= 0:
        return
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    block_d = head_dim_block(head_dim)
    has_prefix = prefix_indptr is not None
    kc = k_cache if k_cache is not None else k
    vc = v_cache if v_cache is not None else v
    score_scale, cap_log2 = _score_params(opts)
    args = (
        q,
        k,
        v,
        out,
        kc,
        vc,
        cu_seqlens_q,
        prefix_indptr if has_prefix else cu_seqlens_q,
        prefix_slots if has_prefix else cu_seqlens_q,
        opts.sinks if opts.sinks is not None else q,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        kc.stride(0),
        kc.stride(1),
        vc.stride(0),
        vc.stride(1),
        score_scale,
        cap_log2,
        opts.window or 0,
        seq_bucket(max_seqlen_q),
    )
    meta: dict[str, Any] = {
        "NUM_Q_HEADS": num_q_heads,
        "GROUP": num_q_heads // k.shape[1],
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "HAS_PREFIX": has_prefix,
        "SOFTCAP": opts.softcap is not None,
        "WINDOW": opts.window is not None,
        "SINKS": opts.sinks is not None,
        "DOT_PRECISION": _dot_precision(q.dtype),
    }

    def grid(cfg: dict[str, Any]) -> tuple[int, int]:
        return (cdiv(max_seqlen_q, cfg["BLOCK_M"]), num_reqs * num_q_heads)

    configs = _EXTEND_CONFIGS_D256 if block_d == 256 else _EXTEND_CONFIGS
    fixed = _fixed(configs, q.dtype, {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2})
    if fixed is not None:
        extend_attention_kernel[grid(fixed)](*args, **meta, **fixed)
    else:
        _extend_tuned[grid](*args, **meta)


FUSED_MAX_SPLITS = 4  # above this the last program's serial combine costs more than a launch


def fused_decode_enabled(num_splits: int, fused: bool | None = None) -> bool:
    """Whether decode runs as one launch (``decode_fused_jit``). ``fused`` forces the
    choice; otherwise one launch for up to FUSED_MAX_SPLITS splits, unless
    $MINISGL_KERNELS_FUSED_DECODE=0 (H100, same run as split + reduce: 0.3-1.9% faster at
    2-4 splits, equal at 1, 42% slower at 64: the last program's combine is serial)."""
    if fused is not None:
        return fused
    if os.environ.get(FUSED_DECODE_ENV, "1") in ("", "0"):
        return False
    return FUSED_DECODE_DEFAULT and num_splits <= FUSED_MAX_SPLITS


_COUNTERS: dict[tuple[str, int | None], torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []  # outgrown counter buffers: captured graphs may still use them


def decode_counters(device: torch.device, n: int) -> torch.Tensor:
    """The device's zeroed int32 counters of the fused decode (at least ``n``).

    Every fused launch leaves them at 0. One buffer per device, grown outside CUDA-graph
    capture and never freed; a capture that needs more gets its own zeroed buffer (the
    zero fill is then part of the graph).
    """
    key = (device.type, device.index)
    buf = _COUNTERS.get(key)
    if buf is not None and buf.numel() >= n:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(n, dtype=torch.int32, device=device)
    if buf is not None:
        _RETIRED.append(buf)
    buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    _COUNTERS[key] = buf
    return buf


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    opts: AttentionOptions,
    *,
    num_splits: int | None,
    out: torch.Tensor,
    fused: bool | None = None,
    kv_lens: torch.Tensor | None = None,
    row_stride: int = 0,
) -> None:
    """Split-KV decode. With ``kv_lens``, ``kv_indptr`` [B] holds request-table rows and
    ``kv_slots`` the flattened table (row stride ``row_stride``): the paged form."""
    batch, num_q_heads, head_dim = q.shape
    if batch == 0:
        return
    num_kv_heads = k_cache.shape[1]
    group = num_q_heads // num_kv_heads
    block_d = head_dim_block(head_dim)
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, q.device)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    fused = fused_decode_enabled(num_splits, fused)
    if fused and num_splits == 1:  # no partials (the kernel never touches these)
        o_part = lse_part = torch.empty(1, dtype=torch.float32, device=q.device)
    else:
        o_part = torch.empty((batch, num_q_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    score_scale, cap_log2 = _score_params(opts)
    paged = kv_lens is not None
    head = (q, k_cache, v_cache, kv_indptr, kv_lens if kv_lens is not None else kv_indptr, kv_slots, o_part, lse_part)
    strides = (q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1))
    tail = (score_scale, cap_log2, opts.window or 0, num_splits, row_stride)
    meta: dict[str, Any] = {
        "NUM_Q_HEADS": num_q_heads,
        "GROUP": group,
        "GROUP_PAD": max(16, next_pow2(group)),
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "SOFTCAP": opts.softcap is not None,
        "WINDOW": opts.window is not None,
        "DOT_PRECISION": _dot_precision(q.dtype),
        "PAGED": paged,
    }
    grid = (num_kv_heads, batch, num_splits)
    fixed = _fixed(_DECODE_CONFIGS, q.dtype, {"BLOCK_N": 32, "PREFETCH_SLOTS": 1, "num_warps": 4, "num_stages": 2})
    sinks = opts.sinks if opts.sinks is not None else q
    if fused:
        counters = decode_counters(q.device, 1 if num_splits == 1 else batch * num_kv_heads)
        args = (*head, counters, out, sinks, *strides, out.stride(0), out.stride(1), *tail)
        kernel, tuned = decode_fused_kernel, _fused_tuned
        meta["SINKS"] = opts.sinks is not None
    else:
        args = (*head, *strides, *tail)
        kernel, tuned = decode_split_kernel, _decode_tuned
    if fixed is not None:
        kernel[grid](*args, **meta, **fixed)
    else:
        tuned[grid](*args, **meta)
    if fused:
        return
    decode_reduce_kernel[(batch, num_q_heads)](
        o_part,
        lse_part,
        out,
        sinks,
        out.stride(0),
        out.stride(1),
        NUM_Q_HEADS=num_q_heads,
        NUM_SPLITS=num_splits,
        SPLITS_PAD=next_pow2(num_splits),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        SINKS=opts.sinks is not None,
        num_warps=4 if num_splits * block_d <= 8192 else 8,
    )
