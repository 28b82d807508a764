"""Latent attention (multi-head latent attention, MLA) over a one-vector-per-token cache: torch reference.

A latent-attention layer caches, per token, one vector ``[latent | rope key]`` shared by all
heads: ``cache [num_slots, width]`` with ``width = latent + rope``. Queries arrive already
mapped into that space (``q [T, H, width]``: the no-rope part multiplied by the key
up-projection, the rope part as is), so a token's score is ``q . entry * scale`` and its value
is the entry's first ``value_dim`` (= latent) features: multi-query attention with one key
head whose values are a prefix of its keys. The layer maps the latent outputs back through
the value up-projection (``minisgl_decl/catalogue/latent_attention.py``).

Plain torch, float32 accumulation, the same causal/varlen conventions as the attention
references in ``reference.py`` (a negative slot stores nothing; a context of length 0 gives
zeros). There is no Triton kernel for it yet: CUDA tensors run this code too.
"""

from __future__ import annotations

import torch


def _check(q: torch.Tensor, cache: torch.Tensor, value_dim: int) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, heads, width], got shape {tuple(q.shape)}")
    if cache.dim() != 2 or cache.shape[1] != q.shape[2]:
        raise ValueError(f"cache must be [slots, {q.shape[2]}] (the width of q), got {tuple(cache.shape)}")
    if not 0 < value_dim <= cache.shape[1]:
        raise ValueError(f"value_dim must be in 1..{cache.shape[1]}, got {value_dim}")


def store_latent(entries: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor) -> None:
    """``cache[slots[t]] = entries[t]``; tokens with a negative slot are skipped."""
    if entries.dim() != 2 or entries.shape[1] != cache.shape[1] or entries.shape[0] != slots.shape[0]:
        raise ValueError(
            f"entries {tuple(entries.shape)} must be [len(slots)={slots.shape[0]}, {cache.shape[1]}] for the cache"
        )
    keep = slots >= 0
    cache[slots[keep].long()] = entries[keep].to(cache.dtype)


def _attend(q: torch.Tensor, kv: torch.Tensor, prefix: int, value_dim: int, scale: float) -> torch.Tensor:
    """Causal attention of q [n, H, W] (tokens prefix..prefix+n-1) over kv [prefix + n, W]."""
    n, s = q.shape[0], kv.shape[0]
    scores = torch.einsum("thw,sw->hts", q.float(), kv.float()) * scale
    q_pos = torch.arange(n, device=q.device).unsqueeze(1) + prefix
    future = torch.arange(s, device=q.device).unsqueeze(0) > q_pos
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hts,sv->thv", probs, kv[:, :value_dim].float())


def latent_extend_attention(
    q: torch.Tensor,
    cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    prefix_indptr: torch.Tensor | None,
    prefix_slots: torch.Tensor | None,
    new_slots: torch.Tensor,
    *,
    value_dim: int,
    scale: float,
) -> torch.Tensor:
    """Causal varlen attention of new tokens over (cached prefix ++ new tokens), read from `cache`.

    Request b's new tokens are ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]``, stored already at
    ``new_slots`` of the same range; its prefix is ``prefix_slots[prefix_indptr[b]:prefix_indptr[b+1]]``.
    Returns ``[T, H, value_dim]`` in q's dtype.
    """
    _check(q, cache, value_dim)
    out = torch.zeros(q.shape[0], q.shape[1], value_dim, dtype=torch.float32, device=q.device)
    cu = [int(x) for x in cu_seqlens_q.tolist()]
    if cu[-1] != q.shape[0] or new_slots.shape[0] != q.shape[0]:
        raise ValueError(f"cu_seqlens_q ends at {cu[-1]}; q has {q.shape[0]} tokens, new_slots {new_slots.shape[0]}")
    pi = [0] * len(cu)
    if prefix_indptr is not None and prefix_slots is not None:
        pi = [int(x) for x in prefix_indptr.tolist()]
        if len(pi) != len(cu):
            raise ValueError("prefix_indptr and cu_seqlens_q must have the same length")
    for b in range(len(cu) - 1):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        slots = new_slots[lo:hi]
        if pi[b + 1] > pi[b]:
            assert prefix_slots is not None
            slots = torch.cat([prefix_slots[pi[b] : pi[b + 1]], slots])
        out[lo:hi] = _attend(q[lo:hi], cache[slots.long()], pi[b + 1] - pi[b], value_dim, scale)
    return out.to(q.dtype)


def latent_decode_attention(
    q: torch.Tensor,
    cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    *,
    value_dim: int,
    scale: float,
) -> torch.Tensor:
    """One new token per request: q [B, H, W] over its whole context
    ``kv_slots[kv_indptr[b]:kv_indptr[b+1]]`` (the new token included). Returns [B, H, value_dim]."""
    _check(q, cache, value_dim)
    ptr = [int(x) for x in kv_indptr.tolist()]
    if len(ptr) != q.shape[0] + 1:
        raise ValueError(f"kv_indptr has {len(ptr)} entries for {q.shape[0]} requests")
    out = torch.zeros(q.shape[0], q.shape[1], value_dim, dtype=torch.float32, device=q.device)
    for b in range(q.shape[0]):
        n = ptr[b + 1] - ptr[b]
        if n:
            out[b] = _attend(q[b : b + 1], cache[kv_slots[ptr[b] : ptr[b + 1]].long()], n - 1, value_dim, scale)[0]
    return out.to(q.dtype)


def latent_decode_attention_paged(
    q: torch.Tensor,
    cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    value_dim: int,
    scale: float,
) -> torch.Tensor:
    """As `latent_decode_attention`, request b's context being ``req_to_token[req_rows[b], :seq_lens[b]]``.

    No host synchronisation (the whole table width is read and masked), so it can run inside
    a captured CUDA graph; a request of length 0 (padding) gives zeros.
    """
    _check(q, cache, value_dim)
    slots = req_to_token[req_rows.long()].long()  # [B, L]
    kv = cache[slots.clamp(min=0)].float()  # [B, L, W]
    scores = torch.einsum("bhw,blw->bhl", q.float(), kv) * scale
    valid = torch.arange(slots.shape[1], device=q.device).unsqueeze(0) < seq_lens.unsqueeze(1)  # [B, L]
    scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhl,blv->bhv", probs, kv[..., :value_dim])
    return out.to(q.dtype)
