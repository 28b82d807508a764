"""Attention and KV-store entry points: argument checks, then Triton or the torch reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minisgl_kernels import _checks
from minisgl_kernels._dispatch import Backend, use_triton
from minisgl_kernels.options import AttentionOptions

if TYPE_CHECKING:
    import torch

_F, _I = _checks.FLOAT_DTYPES, _checks.INDEX_DTYPES


def _check_cache(q: torch.Tensor, k_cache: object, v_cache: object, num_kv_heads: int | None) -> int:
    kc = _checks.tensor("k_cache", k_cache, ndim=3, dtypes=_F, device=q.device)
    vc = _checks.tensor("v_cache", v_cache, ndim=3, dtypes=_F, device=q.device)
    _checks.same_dtype("k_cache", kc, "q", q)
    _checks.same_dtype("v_cache", vc, "q", q)
    heads = num_kv_heads if num_kv_heads is not None else kc.shape[1]
    _checks.dims("k_cache", kc, (None, heads, q.shape[2]))
    _checks.dims("v_cache", vc, (kc.shape[0], heads, q.shape[2]))
    return heads


def extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    prefix_indptr: torch.Tensor | None = None,
    prefix_slots: torch.Tensor | None = None,
    *,
    opts: AttentionOptions,
    max_seqlen_q: int | None = None,
    out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Causal varlen attention of new tokens over their cached prefix and themselves.

    q [T, Hq, D]; k, v [T, Hkv, D] (the new tokens, request after request);
    cu_seqlens_q [B+1] (request b owns rows cu[b]:cu[b+1]); optional prefix given by
    k_cache/v_cache [S, Hkv, D], prefix_indptr [B+1] and prefix_slots (request b's prefix
    is at slots prefix_slots[prefix_indptr[b]:prefix_indptr[b+1]], positions 0..Lp-1,
    and its new tokens are at positions Lp..Lp+n-1). Returns o [T, Hq, D].
    ``max_seqlen_q`` (largest cu[b+1]-cu[b]) saves the Triton path a host sync.
    """
    import torch

    if not isinstance(q, torch.Tensor):
        raise ValueError(f"q must be a torch.Tensor, got {type(q).__name__}")
    q = _checks.tensor("q", q, ndim=3, dtypes=_F)
    k = _checks.tensor("k", k, ndim=3, dtypes=_F, device=q.device)
    v = _checks.tensor("v", v, ndim=3, dtypes=_F, device=q.device)
    _checks.same_dtype("k", k, "q", q)
    _checks.same_dtype("v", v, "q", q)
    _checks.head_dim(q.shape[2])
    _checks.dims("k", k, (q.shape[0], None, q.shape[2]))
    _checks.dims("v", v, tuple(k.shape))
    _checks.heads(q.shape[1], k.shape[1])
    cu = _checks.tensor("cu_seqlens_q", cu_seqlens_q, ndim=1, dtypes=_I, device=q.device)
    if cu.shape[0] < 1:
        raise ValueError("cu_seqlens_q must have at least one entry (B+1 for B requests)")
    prefix = (k_cache, v_cache, prefix_indptr, prefix_slots)
    if any(p is not None for p in prefix) and any(p is None for p in prefix):
        raise ValueError("give all of k_cache, v_cache, prefix_indptr, prefix_slots, or none of them")
    if prefix_indptr is not None:
        _check_cache(q, k_cache, v_cache, k.shape[1])
        pi = _checks.tensor("prefix_indptr", prefix_indptr, ndim=1, dtypes=_I, device=q.device)
        _checks.dims("prefix_indptr", pi, (cu.shape[0],))
        _checks.tensor("prefix_slots", prefix_slots, ndim=1, dtypes=_I, device=q.device)
    _checks.attention_options(opts, q)
    if max_seqlen_q is not None and (not isinstance(max_seqlen_q, int) or max_seqlen_q < 0):
        raise ValueError(f"max_seqlen_q must be None or a non-negative int, got {max_seqlen_q!r}")
    if out is not None:
        _checks.out_like("out", out, q)
    if not use_triton(q, backend):
        from minisgl_kernels import reference

        o = reference.extend_attention(q, k, v, cu, k_cache, v_cache, prefix_indptr, prefix_slots, opts)
        return o if out is None else out.copy_(o)
    _checks.triton_head_dim(q.shape[2])
    from minisgl_kernels.attention_launch import extend_attention_triton

    o = torch.empty_like(q) if out is None else out
    extend_attention_triton(q, k, v, cu, k_cache, v_cache, prefix_indptr, prefix_slots, opts, max_seqlen_q, o)
    return o


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    *,
    opts: AttentionOptions,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """One query token per request over the paged KV cache (split-KV on Triton).

    q [B, Hq, D]; request b's KV (its current token included, stored first with
    ``store_kv``) is at slots kv_slots[kv_indptr[b]:kv_indptr[b+1]], in position order;
    the query sits at the last position. A request with no KV entries yields zeros.
    ``num_splits`` (1..64) fixes the split count; by default it follows B and Hkv only,
    so the launch reads no device data and can be captured in a CUDA graph.
    """
    import torch

    if not isinstance(q, torch.Tensor):
        raise ValueError(f"q must be a torch.Tensor, got {type(q).__name__}")
    q = _checks.tensor("q", q, ndim=3, dtypes=_F)
    _checks.head_dim(q.shape[2])
    num_kv_heads = _check_cache(q, k_cache, v_cache, None)
    _checks.heads(q.shape[1], num_kv_heads)
    ip = _checks.tensor("kv_indptr", kv_indptr, ndim=1, dtypes=_I, device=q.device)
    _checks.dims("kv_indptr", ip, (q.shape[0] + 1,))
    _checks.tensor("kv_slots", kv_slots, ndim=1, dtypes=_I, device=q.device)
    _checks.attention_options(opts, q)
    if num_splits is not None and (not isinstance(num_splits, int) or not 1 <= num_splits <= 64):
        raise ValueError(f"num_splits must be None or an int in [1, 64], got {num_splits!r}")
    if out is not None:
        _checks.out_like("out", out, q)
    if not use_triton(q, backend):
        from minisgl_kernels import reference

        o = reference.decode_attention(q, k_cache, v_cache, ip, kv_slots, opts)
        return o if out is None else out.copy_(o)
    _checks.triton_head_dim(q.shape[2])
    from minisgl_kernels.attention_launch import decode_attention_triton

    o = torch.empty_like(q) if out is None else out
    decode_attention_triton(
        q,
        k_cache,
        v_cache,
        ip,
        kv_slots,
        opts,
        num_splits=num_splits,
        out=o,
    )
    return o


def decode_attention_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    opts: AttentionOptions,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """:func:`decode_attention` reading each request's slots from a request table.

    Request b's KV is at slots ``req_to_token[req_rows[b], :seq_lens[b]]`` (its current
    token included), so the per-step inputs have a fixed shape [B]: with padded rows of
    ``seq_lens == 0`` (zero output) a CUDA graph captured for B serves any batch <= B.
    ``req_to_token`` [rows, max_len] int32/int64, contiguous rows.
    """
    import torch

    if not isinstance(q, torch.Tensor):
        raise ValueError(f"q must be a torch.Tensor, got {type(q).__name__}")
    q = _checks.tensor("q", q, ndim=3, dtypes=_F)
    _checks.head_dim(q.shape[2])
    num_kv_heads = _check_cache(q, k_cache, v_cache, None)
    _checks.heads(q.shape[1], num_kv_heads)
    table = _checks.tensor("req_to_token", req_to_token, ndim=2, dtypes=_I, device=q.device)
    if not table.is_contiguous():
        raise ValueError("req_to_token must be contiguous")
    rows = _checks.tensor("req_rows", req_rows, ndim=1, dtypes=_I, device=q.device)
    _checks.dims("req_rows", rows, (q.shape[0],))
    lens = _checks.tensor("seq_lens", seq_lens, ndim=1, dtypes=_I, device=q.device)
    _checks.dims("seq_lens", lens, (q.shape[0],))
    _checks.attention_options(opts, q)
    if num_splits is not None and (not isinstance(num_splits, int) or not 1 <= num_splits <= 64):
        raise ValueError(f"num_splits must be None or an int in [1, 64], got {num_splits!r}")
    if out is not None:
        _checks.out_like("out", out, q)
    if not use_triton(q, backend):
        from minisgl_kernels import reference

        o = reference.decode_attention_paged(q, k_cache, v_cache, table, rows, lens, opts)
        return o if out is None else out.copy_(o)
    _checks.triton_head_dim(q.shape[2])
    from minisgl_kernels.attention_launch import decode_attention_triton

    o = torch.empty_like(q) if out is None else out
    decode_attention_triton(
        q,
        k_cache,
        v_cache,
        rows,
        table.view(-1),
        opts,
        num_splits=num_splits,
        out=o,
        kv_lens=lens,
        row_stride=table.shape[1],
    )
    return o


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    *,
    backend: Backend | None = None,
) -> None:
    """``k_cache[slots[t]] = k[t]`` and the same for v; a negative slot skips token t.

    k, v [T, Hkv, D]; caches [S, Hkv, D] of the same dtype; slots [T] int32/int64.
    Slots must be distinct (duplicates leave an unspecified winner).
    """
    import torch

    if not isinstance(k, torch.Tensor):
        raise ValueError(f"k must be a torch.Tensor, got {type(k).__name__}")
    k = _checks.tensor("k", k, ndim=3, dtypes=_F)
    v = _checks.tensor("v", v, ndim=3, dtypes=_F, device=k.device)
    _checks.same_dtype("v", v, "k", k)
    _checks.dims("v", v, tuple(k.shape))
    _checks.head_dim(k.shape[2])
    _check_cache(k, k_cache, v_cache, k.shape[1])
    s = _checks.tensor("slots", slots, ndim=1, dtypes=_I, device=k.device)
    _checks.dims("slots", s, (k.shape[0],))
    if not use_triton(k, backend):
        from minisgl_kernels import reference

        reference.store_kv(k, v, k_cache, v_cache, s)
        return
    _checks.triton_head_dim(k.shape[2])
    from minisgl_kernels.kv_store_launch import store_kv_triton

    store_kv_triton(k, v, k_cache, v_cache, s)
