"""Rotary-embedding entry points: the cos/sin table, and rope applied in place (optionally
fused with the KV-cache store): argument checks, then Triton or the torch reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minisgl_kernels import _checks
from minisgl_kernels._dispatch import Backend, use_triton
from minisgl_kernels.options import RopeOptions

if TYPE_CHECKING:
    import torch

_F, _I = _checks.FLOAT_DTYPES, _checks.INDEX_DTYPES
_PLAIN = RopeOptions()


def rope_table(inv_freq: torch.Tensor, scaling: float, num_positions: int) -> torch.Tensor:
    """The cos/sin table ``[num_positions, rotary_dim]`` float32 (cos half, then sin half,
    ``scaling`` folded in) on ``inv_freq``'s device; build it once per model."""
    f = _checks.tensor("inv_freq", inv_freq, ndim=1, dtypes=("float32",))
    if not isinstance(num_positions, int) or num_positions < 0:
        raise ValueError(f"num_positions must be an int >= 0, got {num_positions!r}")
    from minisgl_kernels import reference

    return reference.rope_table(f, float(scaling), num_positions)


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    inv_freq: torch.Tensor,
    opts: RopeOptions = _PLAIN,
    *,
    backend: Backend | None = None,
) -> None:
    """Rotary embedding in place on q [T, Hq, D] and k [T, Hkv, D] (HF rotate-half layout,
    the first ``rotary_dim = 2 * len(inv_freq)`` features), at ``positions [T]``.

    cos/sin come from ``cos_sin`` (from :func:`rope_table`); positions past its rows are
    computed from ``inv_freq`` and ``opts.scaling``. With ``opts.store`` the rotated k and v
    are also stored (as :func:`kernels.store_kv`). With ``opts.norm`` ([head_dim] weights)
    each head of q and k is first normalised as :func:`kernels.rmsnorm`.
    """
    import torch

    if not isinstance(q, torch.Tensor):
        raise ValueError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if not isinstance(opts, RopeOptions):
        raise ValueError(f"opts must be a minisgl_kernels.RopeOptions, got {type(opts).__name__}")
    q = _checks.tensor("q", q, ndim=3, dtypes=_F)
    k = _checks.tensor("k", k, ndim=3, dtypes=_F, device=q.device)
    _checks.same_dtype("k", k, "q", q)
    t, _, d = q.shape
    _checks.dims("k", k, (t, None, d))
    pos = _checks.tensor("positions", positions, ndim=1, dtypes=_I, device=q.device)
    _checks.dims("positions", pos, (t,))
    f = _checks.tensor("inv_freq", inv_freq, ndim=1, dtypes=("float32",), device=q.device)
    half = f.shape[0]
    if not 1 <= 2 * half <= d:
        raise ValueError(f"rotary_dim (2 * len(inv_freq) = {2 * half}) must be in 2..head_dim ({d})")
    cs = _checks.tensor("cos_sin", cos_sin, ndim=2, dtypes=("float32",), device=q.device)
    _checks.dims("cos_sin", cs, (None, 2 * half))
    if cs.shape[0] > 0 and not cs.is_contiguous():
        raise ValueError("cos_sin must be contiguous")
    if opts.store is not None:
        vt = _checks.tensor("v", opts.store.v, ndim=3, dtypes=_F, device=q.device)
        _checks.same_dtype("v", vt, "q", q)
        _checks.dims("v", vt, tuple(k.shape))
        for name, c in (("k_cache", opts.store.k_cache), ("v_cache", opts.store.v_cache)):
            ct = _checks.tensor(name, c, ndim=3, dtypes=_F, device=q.device)
            _checks.same_dtype(name, ct, "q", q)
            _checks.dims(name, ct, (None, k.shape[1], d))
        if opts.store.k_cache.shape[0] != opts.store.v_cache.shape[0]:
            raise ValueError("k_cache and v_cache must have the same number of slots")
        st = _checks.tensor("slots", opts.store.slots, ndim=1, dtypes=_I, device=q.device)
        _checks.dims("slots", st, (t,))
    if opts.norm is not None:
        for name, w in (("q_norm", opts.norm.q_weight), ("k_norm", opts.norm.k_weight)):
            wt = _checks.tensor(name, w, ndim=1, dtypes=_F, device=q.device)
            _checks.dims(name, wt, (d,))
    if not use_triton(q, backend):
        from minisgl_kernels import reference

        reference.apply_rope(q, k, pos, cs, f, opts)
        return
    _checks.triton_head_dim(d)
    from minisgl_kernels.rope_launch import rope_triton

    rope_triton(q, k, pos, cs, f, opts)
