"""Fused activation-and-multiply and routed-experts (MoE) entry points: argument checks,
then Triton or the torch reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minisgl_kernels import _checks
from minisgl_kernels._dispatch import Backend, use_triton
from minisgl_kernels.options import MoEOptions

if TYPE_CHECKING:
    import torch

_F, _I = _checks.FLOAT_DTYPES, _checks.INDEX_DTYPES
_PLAIN = MoEOptions()
#: activation names of ``act_and_mul`` / ``fused_moe``
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def _check_act(act: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


def act_and_mul(
    x: torch.Tensor, act: str = "silu", *, out: torch.Tensor | None = None, backend: Backend | None = None
) -> torch.Tensor:
    """``act(x[..., :F]) * x[..., F:]`` for ``x [..., 2F]`` -> ``[..., F]`` (one pass)."""
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a torch.Tensor with at least one dimension")
    xt = _checks.tensor("x", x, ndim=x.dim(), dtypes=_F)
    _check_act(act)
    if xt.shape[-1] % 2:
        raise ValueError(f"the last dimension of x must be even (gate | up), got {xt.shape[-1]}")
    shape = (*xt.shape[:-1], xt.shape[-1] // 2)
    if out is not None:
        o = _checks.tensor("out", out, ndim=len(shape), dtypes=_F, device=xt.device)
        _checks.dims("out", o, shape)
        _checks.same_dtype("out", o, "x", xt)
    if not use_triton(xt, backend):
        from minisgl_kernels import reference

        y = reference.act_and_mul(xt, act)
        return y if out is None else out.copy_(y)
    from minisgl_kernels.act_launch import act_and_mul_triton

    y = torch.empty(shape, dtype=xt.dtype, device=xt.device) if out is None else out
    try:
        x2, y2 = xt.view(-1, xt.shape[-1]), y.view(-1, shape[-1])
    except RuntimeError as err:
        raise ValueError(f"x and out must be viewable as rows (strides {xt.stride()}, {y.stride()})") from err
    act_and_mul_triton(x2, act, y2)
    return y


def fused_moe(
    x: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    act: str = "silu",
    opts: MoEOptions = _PLAIN,
    *,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Routed experts: ``out[t] = sum_j w[t, j] * down[e] @ (act(gate_e @ x[t]) * (up_e @ x[t]))``
    with ``e = topk_ids[t, j]``, ``w = topk_weights`` (any float dtype; used in x.dtype).

    x [T, dim]; gate_up [E, 2F, dim] (gate rows, then up rows); down [E, dim, F];
    topk_weights, topk_ids [T, top_k]. The Triton path sorts pairs by expert on the device
    (no host sync) and runs two grouped GEMMs; ids outside 0..E-1 are not checked there.
    ``opts`` (:class:`MoEOptions`): a gate|up bias and a clamped / offset / sloped
    activation, fused into the gate|up kernel's epilogue on the Triton path.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    xt = _checks.tensor("x", x, ndim=2, dtypes=_F)
    gu = _checks.tensor("gate_up", gate_up, ndim=3, dtypes=_F, device=xt.device)
    dn = _checks.tensor("down", down, ndim=3, dtypes=_F, device=xt.device)
    _checks.same_dtype("gate_up", gu, "x", xt)
    _checks.same_dtype("down", dn, "x", xt)
    e, two_f, dim = gu.shape
    _checks.dims("gate_up", gu, (None, None, xt.shape[1]))
    if two_f % 2:
        raise ValueError(f"gate_up must have an even number of rows per expert (gate | up), got {two_f}")
    _checks.dims("down", dn, (e, dim, two_f // 2))
    ids = _checks.tensor("topk_ids", topk_ids, ndim=2, dtypes=_I, device=xt.device)
    _checks.dims("topk_ids", ids, (xt.shape[0], None))
    w = _checks.tensor("topk_weights", topk_weights, ndim=2, dtypes=_F, device=xt.device)
    _checks.dims("topk_weights", w, tuple(ids.shape))
    _check_act(act)
    if not isinstance(opts, MoEOptions):
        raise ValueError(f"opts must be a minisgl_kernels.MoEOptions, got {type(opts).__name__}")
    if opts.gate_up_bias is not None:
        bias = _checks.tensor("gate_up_bias", opts.gate_up_bias, ndim=2, dtypes=_F, device=xt.device)
        _checks.dims("gate_up_bias", bias, (e, two_f))
        if not bias.is_contiguous():
            raise ValueError("gate_up_bias must be contiguous")
    if opts.alpha != 1.0 and act != "silu":
        raise ValueError(f"alpha (the sigmoid slope) applies to silu only, got act {act!r}")
    if not use_triton(xt, backend):
        from minisgl_kernels import reference

        if ids.numel() and not bool(((ids >= 0) & (ids < e)).all()):  # a host read: reference only
            raise ValueError(f"topk_ids must be in 0..{e - 1}")
        return reference.fused_moe(xt, gu, dn, w, ids, act, opts)
    from minisgl_kernels.moe_launch import fused_moe_triton

    out = torch.empty_like(xt)
    fused_moe_triton(xt, gu, dn, w.to(xt.dtype).contiguous(), ids, act, out, opts)
    return out
