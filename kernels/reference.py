"""Plain-torch references with the same semantics as the Triton kernels.

These run on any device (the engine uses them on CPU). Arguments are assumed to
have passed :mod:`kernels._checks`; the data-dependent checks that the Triton
launchers cannot afford (they would synchronise) are done here.
See ``kernels/README.md`` for the semantics and the KV-cache layout.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F


def rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float = 0.0,
    cast_before_weight: bool = True,
) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in float32, returned in ``x.dtype``.

    ``cast_before_weight=True`` is HF LlamaRMSNorm (normalised x is rounded to the input
    dtype, then multiplied by the weight); ``False`` is HF Gemma (multiply in float32,
    round once). The weight factor is ``offset + weight.float()``.
    """
    xf = x.float()
    normed = F.rms_norm(xf, (xf.shape[-1],), eps=eps)  # xf * rsqrt(mean(xf^2) + eps), one fused op
    if cast_before_weight:
        normed = normed.to(x.dtype).float()
    w = weight.float() if offset == 0 else weight.float() + offset
    return (normed * w).to(x.dtype)


def add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float = 0.0,
    cast_before_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(rmsnorm(x + residual), x + residual)``; the sum is rounded to ``x.dtype``."""
    summed = (x.float() + residual.float()).to(x.dtype)
    return rmsnorm(summed, weight, eps, offset=offset, cast_before_weight=cast_before_weight), summed


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Attention of one request in float32: q [n, Hq, D], k/v [L, Hkv, D] -> [n, Hq, D].

    Query at position p sees keys at positions j with ``j <= p`` and, with a window,
    ``p - window < j``. Soft-cap is applied to the scaled scores before masking.
    """
    group = q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)  # [Hq, n, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale  # the order of HF's eager attention (prefill)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key give 0
    return torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)


def _bounds(indptr: torch.Tensor, name: str, total: int) -> list[int]:
    bounds = [int(b) for b in indptr.tolist()]
    if bounds[0] != 0 or any(a > b for a, b in itertools.pairwise(bounds)):
        raise ValueError(f"{name} must start at 0 and be non-decreasing, got {bounds}")
    if bounds[-1] > total:
        raise ValueError(f"{name} ends at {bounds[-1]} but only {total} entries exist")
    return bounds


def _attend_padded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_len: torch.Tensor,
    *,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Batched :func:`attend`: q [B, n, Hq, D] over k/v [B, L, Hkv, D] -> [B, n, Hq, D] (q's dtype).

    Request b's keys are rows ``0..k_len[b]-1`` at positions equal to their row index; its
    query i sits at ``q_pos[b, i]``. GQA by grouping the query heads (no key repeat).
    """
    b, n, hq, d = q.shape
    length, hkv = k.shape[1], k.shape[2]
    k_pos = torch.arange(length, device=q.device)
    visible = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < k_len[:, None, None])
    if window is not None:
        visible &= k_pos[None, None, :] > q_pos[:, :, None] - window
    if softcap is None:  # one fused op; rows with no visible key are zeroed
        o = F.scaled_dot_product_attention(
            q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2),
            attn_mask=visible[:, None], scale=scale, enable_gqa=True,
        )
        o = o.masked_fill(~visible.any(-1)[:, None, :, None], 0.0)
        return o.transpose(1, 2).to(q.dtype)
    g = hq // hkv
    qf = q.float().reshape(b, n, hkv, g, d).permute(0, 2, 3, 1, 4)  # [B, Hkv, g, n, D]
    kf = k.float().permute(0, 2, 1, 3).unsqueeze(2)  # [B, Hkv, 1, L, D]
    vf = v.float().permute(0, 2, 1, 3).unsqueeze(2)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [B, Hkv, g, n, L]
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key give 0
    out = torch.matmul(probs, vf)  # [B, Hkv, g, n, D]
    return out.permute(0, 3, 1, 2, 4).reshape(b, n, hq, d).to(q.dtype)


def _padded_slots(slots: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] slot indices: row b reads ``slots[starts[b] + j]`` (clamped; masked later)."""
    idx = starts[:, None] + torch.arange(length, device=slots.device)[None, :]
    return slots[idx.clamp_(max=max(slots.shape[0] - 1, 0))].long()


def extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    prefix_indptr: torch.Tensor | None,
    prefix_slots: torch.Tensor | None,
    *,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal varlen attention of new tokens over (cached prefix ++ new tokens).

    Requests with one new token (decodes riding in a mixed batch) run as one padded batch;
    longer ones one by one (each is a large matmul already).
    """
    out = torch.zeros_like(q)
    cu = _bounds(cu_seqlens_q, "cu_seqlens_q", q.shape[0])
    if cu[-1] != q.shape[0]:
        raise ValueError(f"cu_seqlens_q ends at {cu[-1]} but q has {q.shape[0]} tokens")
    nb = len(cu) - 1
    pi = [0] * (nb + 1)
    cached = prefix_indptr is not None and k_cache is not None and v_cache is not None and prefix_slots is not None
    if prefix_indptr is not None and prefix_slots is not None:
        pi = _bounds(prefix_indptr, "prefix_indptr", prefix_slots.shape[0])
        if len(pi) != len(cu):
            raise ValueError("prefix_indptr and cu_seqlens_q must have the same length")
    singles = [b for b in range(nb) if cu[b + 1] - cu[b] == 1]
    if len(singles) > 1:
        rows = torch.tensor([cu[b] for b in singles], device=q.device)
        plen = torch.tensor([pi[b + 1] - pi[b] for b in singles], device=q.device)
        longest = int(max(pi[b + 1] - pi[b] for b in singles))
        nq = len(singles)
        keys = k.new_zeros(nq, longest + 1, k.shape[1], k.shape[2])
        values = v.new_zeros(nq, longest + 1, v.shape[1], v.shape[2])
        if cached and longest > 0:
            assert k_cache is not None and v_cache is not None and prefix_slots is not None
            starts = torch.tensor([pi[b] for b in singles], device=q.device)
            idx = _padded_slots(prefix_slots, starts, longest)
            keys[:, :longest] = k_cache[idx]
            values[:, :longest] = v_cache[idx]
        at = torch.arange(nq, device=q.device)
        keys[at, plen] = k[rows]
        values[at, plen] = v[rows]
        out[rows] = _attend_padded(
            q[rows].unsqueeze(1), keys, values, plen[:, None], plen + 1,
            scale=scale, window=window, softcap=softcap,
        ).squeeze(1)
        done = set(singles)
    else:
        done = set()
    for b in range(nb):
        q0, q1 = cu[b], cu[b + 1]
        if q0 == q1 or b in done:
            continue
        keys, values = k[q0:q1], v[q0:q1]
        n_prefix = 0
        if cached and k_cache is not None and v_cache is not None and prefix_slots is not None:
            slots = prefix_slots[pi[b] : pi[b + 1]].long()
            n_prefix = slots.shape[0]
            keys = torch.cat([k_cache[slots], keys])
            values = torch.cat([v_cache[slots], values])
        k_pos = torch.arange(keys.shape[0], device=q.device)
        q_pos = k_pos[n_prefix:]
        out[q0:q1] = attend(
            q[q0:q1], keys, values, q_pos, k_pos, scale=scale, window=window, softcap=softcap
        )
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    *,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One query per request, at position ``len - 1`` of its KV (which already holds it).

    A request with no KV entries gets a zero output. All requests run as one padded batch
    (one gather of every request's KV, masked beyond its length).
    """
    if len(kv_indptr) != q.shape[0] + 1:
        raise ValueError(f"kv_indptr must have {q.shape[0] + 1} entries, got {len(kv_indptr)}")
    layout = _decode_layout(kv_indptr, kv_slots, q.device)
    if layout is None:
        return torch.zeros_like(q)
    idx, k_len = layout
    return _attend_padded(
        q.unsqueeze(1), k_cache[idx], v_cache[idx], (k_len - 1)[:, None], k_len,
        scale=scale, window=window, softcap=softcap,
    ).squeeze(1)


# The last decode layout: every layer of a step passes the same kv_indptr/kv_slots tensors.
_LAYOUT: list[tuple[weakref.ref[torch.Tensor], weakref.ref[torch.Tensor], tuple[int, int],
                    tuple[torch.Tensor, torch.Tensor] | None]] = []


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (inference tensors have none: they are not modified between layers)."""
    return -1 if t.is_inference() else t._version


def _decode_layout(
    kv_indptr: torch.Tensor, kv_slots: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(padded slot index [B, Lmax], lengths [B]) of a decode batch; None when every request is empty.

    Computed (and checked) once per pair of index tensors, then reused by the other layers.
    """
    versions = (_version(kv_indptr), _version(kv_slots))
    if _LAYOUT:
        ip_ref, sl_ref, seen, value = _LAYOUT[0]
        if ip_ref() is kv_indptr and sl_ref() is kv_slots and seen == versions:
            return value
    bounds = _bounds(kv_indptr, "kv_indptr", kv_slots.shape[0])
    longest = max((b - a for a, b in itertools.pairwise(bounds)), default=0)
    value = None
    if longest > 0:
        ip = kv_indptr.to(device=device, dtype=torch.int64)
        value = (_padded_slots(kv_slots, ip[:-1], longest), ip[1:] - ip[:-1])
    _LAYOUT[:] = [(weakref.ref(kv_indptr), weakref.ref(kv_slots), versions, value)]
    return value


def decode_attention_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """:func:`decode_attention` over ``req_to_token[req_rows[b], :seq_lens[b]]``."""
    lens = seq_lens.long()
    if bool((lens < 0).any()) or bool((lens > req_to_token.shape[1]).any()):
        raise ValueError(f"seq_lens must be in 0..{req_to_token.shape[1]} (the request table's width)")
    indptr = torch.zeros(lens.shape[0] + 1, dtype=torch.int64, device=q.device)
    torch.cumsum(lens, 0, out=indptr[1:])
    cols = torch.arange(req_to_token.shape[1], device=q.device)
    keep = cols[None, :] < lens[:, None]
    slots = req_to_token[req_rows.long()][keep]  # row-major: request after request, in position order
    return decode_attention(q, k_cache, v_cache, indptr, slots, scale=scale, window=window, softcap=softcap)

def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """``k_cache[slots[t]] = k[t]`` (same for v); tokens with a negative slot are skipped."""
    if slots.device.type == "cpu" and (slots.numel() == 0 or int(slots.min()) >= 0):  # no mask needed
        idx = slots.long()
        k_cache.index_copy_(0, idx, k.to(k_cache.dtype))
        v_cache.index_copy_(0, idx, v.to(v_cache.dtype))
        return
    keep = slots >= 0
    idx = slots[keep].long()
    k_cache[idx] = k[keep].to(k_cache.dtype)
    v_cache[idx] = v[keep].to(v_cache.dtype)


# --- rotary embedding, activation-and-multiply, routed experts ---------------------------


def rope_table(inv_freq: torch.Tensor, scaling: float, num_positions: int) -> torch.Tensor:
    """``[num_positions, 2 * half]`` float32: ``cos(p * inv_freq) * scaling | sin(...) * scaling``.

    The float32 product ``p * inv_freq`` is the one HF's rotary module forms, so a row equals
    HF's cos/sin at that position (before HF's cast to the model dtype).
    """
    pos = torch.arange(num_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = pos[:, None] * inv_freq.float()[None, :]
    return torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)


def rope_cos_sin(
    positions: torch.Tensor, cos_sin: torch.Tensor, inv_freq: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Table rows for ``positions``; rows past the table are computed from ``inv_freq``."""
    rows = cos_sin.shape[0]
    if positions.numel() == 0 or int(positions.max()) < rows:  # a host read: fine for a reference
        return cos_sin[positions.long()]
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]
    fresh = torch.cat((freqs.cos() * scaling, freqs.sin() * scaling), dim=-1)
    if rows == 0:
        return fresh
    inside = (positions < rows)[:, None]
    return torch.where(inside, cos_sin[positions.clamp(max=rows - 1).long()], fresh)


# The last rope rows: every layer of a step passes the same positions tensor and table.
_ROPE: list[tuple[tuple[weakref.ref[torch.Tensor], ...], tuple[object, ...], tuple[torch.Tensor, torch.Tensor]]] = []


def _rope_rows(
    positions: torch.Tensor, cos_sin: torch.Tensor, inv_freq: torch.Tensor, scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, 1, half] float32 (rounded to ``dtype`` first), computed once per positions tensor."""
    key = (_version(positions), _version(cos_sin), scaling, dtype)
    if _ROPE:
        refs, seen, value = _ROPE[0]
        if refs[0]() is positions and refs[1]() is cos_sin and refs[2]() is inv_freq and seen == key:
            return value
    half = inv_freq.shape[0]
    cs = rope_cos_sin(positions, cos_sin, inv_freq, scaling).to(dtype).float()
    value = (cs[:, None, :half], cs[:, None, half:])
    _ROPE[:] = [((weakref.ref(positions), weakref.ref(cos_sin), weakref.ref(inv_freq)), key, value)]
    return value


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    inv_freq: torch.Tensor,
    scaling: float,
    *,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slots: torch.Tensor | None = None,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    norm_eps: float = 1e-6,
    norm_offset: float = 0.0,
    norm_cast_before_weight: bool = True,
) -> None:
    """Rotate features ``[0, 2*half)`` of q [T, Hq, D] and k [T, Hkv, D] in place (rotate-half
    layout); cos/sin rounded to the model dtype as in HF, the rotation in float32, rounded once.
    With ``q_norm``/``k_norm``, each head is first replaced by its :func:`rmsnorm`.
    With ``k_cache`` etc., then ``store_kv(k, v, k_cache, v_cache, slots)``."""
    if q_norm is not None and k_norm is not None:
        opts = {"offset": norm_offset, "cast_before_weight": norm_cast_before_weight}
        q.copy_(rmsnorm(q, q_norm, norm_eps, **opts))
        k.copy_(rmsnorm(k, k_norm, norm_eps, **opts))
    cos, sin = _rope_rows(positions, cos_sin, inv_freq, scaling, q.dtype)
    half = inv_freq.shape[0]
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()  # views when x is float32
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        x[..., :half] = y1
        x[..., half : 2 * half] = y2
    if k_cache is not None:
        if v is None or v_cache is None or slots is None:
            raise ValueError("storing into the KV cache needs v, k_cache, v_cache and slots together")
        store_kv(k, v, k_cache, v_cache, slots)


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function of a kernel activation name (see ``kernels.act_jit``)."""
    from torch.nn import functional as F

    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "silu": F.silu,
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
    }
    return fns[name]


def act_and_mul(x: torch.Tensor, act: str) -> torch.Tensor:
    """``act(x[..., :F]) * x[..., F:]`` for ``x [..., 2F]``."""
    gate, up = x.chunk(2, dim=-1)
    return activation(act)(gate) * up


def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    act: str,
) -> torch.Tensor:
    """Routed experts, one expert at a time: for each token t and choice j with expert
    ``e = topk_ids[t, j]``: ``out[t] += weight[t, j] * down[e] @ (act(gate_e x) * up_e x)``.

    ``gate_up [E, 2F, dim]`` (gate rows first), ``down [E, dim, F]``.
    """
    from torch.nn import functional as F

    ffn = down.shape[2]
    fn = activation(act)
    weights = topk_weights.to(x.dtype)
    out = torch.zeros_like(x)
    for e in torch.unique(topk_ids).tolist():
        token, slot = torch.where(topk_ids == e)
        gate, up = F.linear(x[token], gate_up[e]).split(ffn, dim=-1)
        y = F.linear(fn(gate) * up, down[e]) * weights[token, slot, None]
        out.index_add_(0, token, y)
    return out
