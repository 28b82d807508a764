"""Plain-torch references with the same semantics as the Triton kernels.

These run on any device (the engine uses them on CPU). Arguments are assumed to
have passed :mod:`kernels._checks`; the data-dependent checks that the Triton
launchers cannot afford (they would synchronise) are done here.
See ``minisgl_kernels/README.md`` for the semantics and the KV-cache layout.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from minisgl_kernels.options import AttentionOptions, MoEOptions, RopeOptions


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without a dispatched no-op when t already has it (the CPU decode step
    is host-bound: every skipped call counts)."""
    return t if t.dtype == dtype else t.to(dtype)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return _as(t, torch.float32)


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
    xf = _f32(x)
    # HF's expression; F.rms_norm computes the same on CPU but through ~20 dispatched ops
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if cast_before_weight:
        normed = _f32(_as(normed, x.dtype))
    w = _f32(weight) if offset == 0 else _f32(weight) + offset
    return _as(normed * w, x.dtype)


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
    summed = _as(_f32(x) + _f32(residual), x.dtype)
    return rmsnorm(summed, weight, eps, offset=offset, cast_before_weight=cast_before_weight), summed


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    opts: AttentionOptions,
) -> torch.Tensor:
    """Attention of one request in float32: q [n, Hq, D], k/v [L, Hkv, D] -> [n, Hq, D].

    Query at position p sees keys at positions j with ``j <= p`` and, with a window,
    ``p - window < j``. Soft-cap is applied to the scaled scores before masking.
    """
    group = q.shape[1] // k.shape[1]
    qf = q.float().transpose(0, 1)  # [Hq, n, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * opts.scale  # the order of HF's eager attention (prefill)
    if opts.softcap is not None:
        scores = opts.softcap * torch.tanh(scores / opts.softcap)
    visible = k_pos[None, :] <= q_pos[:, None]
    if opts.window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - opts.window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = _softmax(scores, None if opts.sinks is None else _f32(opts.sinks)[:, None, None])
    return torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)


def _softmax(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim; with ``sinks`` (broadcast to scores[..., :1]) one more logit
    per row joins the denominator and is dropped after. Rows with no visible key give 0."""
    if sinks is None:
        return torch.softmax(scores, dim=-1).nan_to_num(0.0)
    joined = torch.cat((scores, sinks.expand(*scores.shape[:-1], 1)), dim=-1)
    return torch.softmax(joined, dim=-1)[..., :-1]


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
    opts: AttentionOptions,
    mask: _PaddedMask | None = None,
) -> torch.Tensor:
    """Batched :func:`attend`: q [B, n, Hq, D] over k/v [B, L, Hkv, D] -> [B, n, Hq, D] (q's dtype).

    Request b's keys are rows ``0..k_len[b]-1`` at positions equal to their row index; its
    query i sits at ``q_pos[b, i]``. GQA by grouping the query heads (no key repeat).
    ``mask`` is :func:`_padded_mask` of these arguments when the caller has it already.
    """
    b, n, hq, d = q.shape
    hkv = k.shape[2]
    if mask is None:
        mask = _padded_mask(q_pos, k_len, k.shape[1], opts.window)
    visible = mask.visible
    softcap = opts.softcap
    if softcap is None and opts.sinks is None:  # one fused op; rows with no visible key are zeroed
        o = F.scaled_dot_product_attention(
            _f32(q).transpose(1, 2),
            _f32(k).transpose(1, 2),
            _f32(v).transpose(1, 2),
            attn_mask=mask.sdpa_mask,
            scale=opts.scale,
            enable_gqa=True,
        )
        if mask.empty_rows is not None:
            o = o.masked_fill(mask.empty_rows, 0.0)
        return _as(o.transpose(1, 2), q.dtype)
    g = hq // hkv
    qf = _f32(q).reshape(b, n, hkv, g, d).permute(0, 2, 3, 1, 4)  # [B, Hkv, g, n, D]
    kf = _f32(k).permute(0, 2, 1, 3).unsqueeze(2)  # [B, Hkv, 1, L, D]
    vf = _f32(v).permute(0, 2, 1, 3).unsqueeze(2)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * opts.scale  # [B, Hkv, g, n, L]
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    sinks = None if opts.sinks is None else _f32(opts.sinks).reshape(1, hkv, g, 1, 1)
    probs = _softmax(scores, sinks)
    out = torch.matmul(probs, vf)  # [B, Hkv, g, n, D]
    return _as(out.permute(0, 3, 1, 2, 4).reshape(b, n, hq, d), q.dtype)


@dataclass(frozen=True)
class _PaddedMask:
    visible: torch.Tensor  # [B, n, L] bool
    sdpa_mask: torch.Tensor | None  # visible[:, None], or None when every key is visible
    empty_rows: torch.Tensor | None  # [B, 1, n, 1] rows with no visible key, or None when there are none


def _padded_mask(
    q_pos: torch.Tensor,
    k_len: torch.Tensor,
    length: int,
    window: int | None,
    *,
    full: bool = False,
    none_empty: bool = False,
) -> _PaddedMask:
    """The key mask of :func:`_attend_padded`. What the caller knows on the host: ``full``,
    every query sits at ``length - 1`` and has ``k_len == length`` (so without a window SDPA
    needs no mask: adding 0 is exact); ``none_empty``, every query sees at least one key."""
    k_pos = torch.arange(length, device=q_pos.device)
    visible = (k_pos[None, None, :] <= q_pos[:, :, None]) & (k_pos[None, None, :] < k_len[:, None, None])
    if window is not None:
        visible &= k_pos[None, None, :] > q_pos[:, :, None] - window
    if full and (window is None or window >= length):
        return _PaddedMask(visible, None, None)
    empty = None if none_empty else ~visible.any(-1)[:, None, :, None]
    return _PaddedMask(visible, visible[:, None], empty)


def _padded_slots(slots: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] slot indices: row b reads ``slots[starts[b] + j]`` (clamped; masked later)."""
    idx = starts[:, None] + torch.arange(length, device=slots.device)[None, :]
    return slots[idx.clamp_(max=max(slots.shape[0] - 1, 0))].long()


def _gather_rows(cache: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``cache[idx]`` for an index tensor of any shape (the same values): ``index_select`` copies
    whole rows, about 5x faster on CPU than advanced indexing for a decode batch's KV."""
    return cache.index_select(0, idx.reshape(-1)).view(*idx.shape, *cache.shape[1:])


def extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    k_cache: torch.Tensor | None,
    v_cache: torch.Tensor | None,
    prefix_indptr: torch.Tensor | None,
    prefix_slots: torch.Tensor | None,
    opts: AttentionOptions,
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
            keys[:, :longest] = _gather_rows(k_cache, idx)
            values[:, :longest] = _gather_rows(v_cache, idx)
        at = torch.arange(nq, device=q.device)
        keys[at, plen] = k[rows]
        values[at, plen] = v[rows]
        out[rows] = _attend_padded(
            q[rows].unsqueeze(1),
            keys,
            values,
            plen[:, None],
            plen + 1,
            opts,
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
        out[q0:q1] = attend(q[q0:q1], keys, values, q_pos, k_pos, opts)
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_slots: torch.Tensor,
    opts: AttentionOptions,
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
    return _attend_padded(
        q.unsqueeze(1),
        _gather_rows(k_cache, layout.idx),
        _gather_rows(v_cache, layout.idx),
        layout.q_pos,
        layout.k_len,
        opts,
        mask=layout.mask(opts.window),
    ).squeeze(1)


@dataclass
class _DecodeLayout:
    """A decode batch padded to its longest request: slot index [B, Lmax], lengths [B]."""

    idx: torch.Tensor
    k_len: torch.Tensor
    q_pos: torch.Tensor  # [B, 1]: each query is its request's last key
    full: bool  # every request has Lmax keys
    none_empty: bool  # every request has a key
    masks: dict[int | None, _PaddedMask] = field(default_factory=dict)  # by window

    def mask(self, window: int | None) -> _PaddedMask:
        if window not in self.masks:
            self.masks[window] = _padded_mask(
                self.q_pos, self.k_len, self.idx.shape[1], window, full=self.full, none_empty=self.none_empty
            )
        return self.masks[window]


class _Memo:
    """One value derived from some tensors, reused while the same tensor objects are passed
    unmodified (every layer of a step passes the step's index tensors)."""

    def __init__(self) -> None:
        self._refs: tuple[weakref.ref[torch.Tensor], ...] = ()
        self._key: tuple[object, ...] = ()
        self._value: object = None

    def get(self, tensors: tuple[torch.Tensor, ...], extra: tuple[object, ...]) -> tuple[bool, object]:
        key = (*(_version(t) for t in tensors), *extra)
        hit = (
            len(self._refs) == len(tensors)
            and key == self._key
            and all(r() is t for r, t in zip(self._refs, tensors, strict=True))
        )
        return hit, self._value if hit else None

    def put(self, tensors: tuple[torch.Tensor, ...], extra: tuple[object, ...], value: object) -> None:
        self._refs = tuple(weakref.ref(t) for t in tensors)
        self._key = (*(_version(t) for t in tensors), *extra)
        self._value = value


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (inference tensors have none: they are not modified between layers)."""
    return -1 if t.is_inference() else t._version


_LAYOUT = _Memo()


def _decode_layout(kv_indptr: torch.Tensor, kv_slots: torch.Tensor, device: torch.device) -> _DecodeLayout | None:
    """The padded layout of a decode batch; None when every request is empty.

    Computed (and checked) once per pair of index tensors, then reused by the other layers.
    """
    hit, value = _LAYOUT.get((kv_indptr, kv_slots), (str(device),))
    if hit:
        return value  # type: ignore[return-value]
    bounds = _bounds(kv_indptr, "kv_indptr", kv_slots.shape[0])
    lens = [b - a for a, b in itertools.pairwise(bounds)]
    longest = max(lens, default=0)
    layout = None
    if longest > 0:
        ip = kv_indptr.to(device=device, dtype=torch.int64)
        k_len = ip[1:] - ip[:-1]
        layout = _DecodeLayout(
            _padded_slots(kv_slots, ip[:-1], longest),
            k_len,
            k_len[:, None] - 1,
            full=min(lens) == longest,
            none_empty=min(lens) > 0,
        )
    _LAYOUT.put((kv_indptr, kv_slots), (str(device),), layout)
    return layout


def decode_attention_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_rows: torch.Tensor,
    seq_lens: torch.Tensor,
    opts: AttentionOptions,
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
    return decode_attention(q, k_cache, v_cache, indptr, slots, opts)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """``k_cache[slots[t]] = k[t]`` (same for v); tokens with a negative slot are skipped."""
    if slots.device.type == "cpu":
        hit, idx = _STORE.get((slots,), ())
        if not hit:  # every layer of a step passes the same slots: index (or mask) once
            idx = _as(slots, torch.int64) if slots.numel() == 0 or int(slots.min()) >= 0 else None
            _STORE.put((slots,), (), idx)
        if isinstance(idx, torch.Tensor):  # no negative slot: no mask needed
            k_cache.index_copy_(0, idx, _as(k, k_cache.dtype))
            v_cache.index_copy_(0, idx, _as(v, v_cache.dtype))
            return
    keep = slots >= 0
    idx = slots[keep].long()
    k_cache[idx] = _as(k[keep], k_cache.dtype)
    v_cache[idx] = _as(v[keep], v_cache.dtype)


_STORE = _Memo()


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


# The last rope rows: every layer of a step passes the same positions tensor and table
# (each layer has its own inv_freq, which matters only for positions past the table).
_ROPE = _Memo()


def _rope_rows(
    positions: torch.Tensor, cos_sin: torch.Tensor, inv_freq: torch.Tensor, scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, 1, half] float32 (rounded to ``dtype`` first), computed once per positions tensor."""
    extra = (scaling, dtype, inv_freq.shape[0])
    hit, value = _ROPE.get((positions, cos_sin), extra)
    if hit:
        freq_ref, rows = value  # type: ignore[misc]
        if freq_ref is None or freq_ref() is inv_freq:
            return rows  # type: ignore[no-any-return]
    half = inv_freq.shape[0]
    in_table = positions.numel() == 0 or int(positions.max()) < cos_sin.shape[0]
    cs = _f32(_as(rope_cos_sin(positions, cos_sin, inv_freq, scaling), dtype))
    rows = (cs[:, None, :half], cs[:, None, half:])
    _ROPE.put((positions, cos_sin), extra, (None if in_table else weakref.ref(inv_freq), rows))
    return rows


_ROPE_FULL = _Memo()


def _rope_full(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[cos|cos]``, ``[sin|sin]`` of one step's rope rows (built once, reused by every layer)."""
    hit, value = _ROPE_FULL.get((cos, sin), ())
    if not hit:
        value = (torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1))
        _ROPE_FULL.put((cos, sin), (), value)
    return value  # type: ignore[return-value]


def _joined(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """q [T, Hq, D] and k [T, Hkv, D] as one [T, Hq + Hkv, D] view when k's heads follow q's in
    memory (the split of one fused qkv projection), else None."""
    if q.dim() != 3 or k.dim() != 3 or q.dtype != k.dtype or q.device != k.device:
        return None
    t, hq, d = q.shape
    heads = hq + k.shape[1]
    if k.shape[0] != t or k.shape[2] != d or q.stride()[1:] != (d, 1) or k.stride()[1:] != (d, 1):
        return None
    if t > 1 and (q.stride(0) != k.stride(0) or q.stride(0) < heads * d):  # (one row: any stride)
        return None
    if k.storage_offset() != q.storage_offset() + hq * d:
        return None
    if q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr():
        return None
    return q.as_strided((t, heads, d), (q.stride(0) if t > 1 else heads * d, d, 1))


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    inv_freq: torch.Tensor,
    opts: RopeOptions,
) -> None:
    """Rotate features ``[0, 2*half)`` of q [T, Hq, D] and k [T, Hkv, D] in place (rotate-half
    layout); cos/sin rounded to the model dtype as in HF, the rotation in float32, rounded once.
    With ``opts.norm``, each head is first replaced by its :func:`rmsnorm`.
    With ``opts.store``, then :func:`store_kv` of the rotated k and v."""
    norm = opts.norm
    if norm is not None:
        q.copy_(rmsnorm(q, norm.q_weight, norm.eps, offset=norm.offset, cast_before_weight=norm.cast_before_weight))
        k.copy_(rmsnorm(k, norm.k_weight, norm.eps, offset=norm.offset, cast_before_weight=norm.cast_before_weight))
    cos, sin = _rope_rows(positions, cos_sin, inv_freq, opts.scaling, q.dtype)
    half = inv_freq.shape[0]
    qk = _joined(q, k)
    for x in (q, k) if qk is None else (qk,):
        if 2 * half == x.shape[-1]:  # the whole head: x*[cos|cos] + [-x2|x1]*[sin|sin], rounded once
            xf = _f32(x)  # (the same products and sums as below: a + (-b) == a - b exactly)
            cos2, sin2 = _rope_full(cos, sin)
            x.copy_(xf * cos2 + torch.cat((-xf[..., half:], xf[..., :half]), dim=-1) * sin2)
            continue
        x1, x2 = _f32(x[..., :half]), _f32(x[..., half : 2 * half])  # views when x is float32
        y1, y2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        x[..., :half] = y1
        x[..., half : 2 * half] = y2
    if opts.store is not None:
        st = opts.store
        store_kv(k, st.v, st.k_cache, st.v_cache, st.slots)


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
    opts: MoEOptions | None = None,
) -> torch.Tensor:
    """Routed experts, one expert at a time: for each token t and choice j with expert
    ``e = topk_ids[t, j]``: ``out[t] += weight[t, j] * down[e] @ (act(gate_e x) * up_e x)``.

    ``gate_up [E, 2F, dim]`` (gate rows first), ``down [E, dim, F]``; ``opts`` as
    :class:`MoEOptions` (bias, clamp, up offset, silu slope).
    """
    from torch.nn import functional as F

    o = opts if opts is not None else MoEOptions()
    ffn = down.shape[2]
    fn = activation(act)
    if o.alpha != 1.0:  # silu with a sigmoid slope (checked by the entry point)
        alpha = o.alpha

        def fn(g: torch.Tensor) -> torch.Tensor:
            return g * torch.sigmoid(g * alpha)

    weights = topk_weights.to(x.dtype)
    out = torch.zeros_like(x)
    for e in torch.unique(topk_ids).tolist():
        token, slot = torch.where(topk_ids == e)
        bias = None if o.gate_up_bias is None else o.gate_up_bias[e]
        gate, up = F.linear(x[token], gate_up[e], bias).split(ffn, dim=-1)
        if o.limit is not None:
            gate, up = gate.clamp(max=o.limit), up.clamp(min=-o.limit, max=o.limit)
        if o.up_offset != 0.0:
            up = up + o.up_offset
        y = F.linear(fn(gate) * up, down[e]) * weights[token, slot, None]
        out.index_add_(0, token, y)
    return out


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight^T (+ bias)`` accumulated in float32, rounded once to x.dtype (the GEMV's
    semantics: x [M, K], weight [N, K] row-major as torch Linear stores it, bias [N])."""
    y = _f32(x) @ _f32(weight).t()
    if bias is not None:
        y = y + _f32(bias)
    return _as(y, x.dtype)
