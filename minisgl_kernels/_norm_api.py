"""RMSNorm entry points: argument checks, then Triton or the torch reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minisgl_kernels import _checks
from minisgl_kernels._dispatch import Backend, use_triton

if TYPE_CHECKING:
    import torch


def _check_norm(x: object, weight: object, eps: float, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a torch.Tensor with at least one dimension")
    xt = _checks.tensor("x", x, ndim=x.dim(), dtypes=_checks.FLOAT_DTYPES)
    w = _checks.tensor("weight", weight, ndim=1, dtypes=_checks.FLOAT_DTYPES, device=xt.device)
    _checks.dims("weight", w, (xt.shape[-1],))
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    if not isinstance(offset, (int, float)):
        raise ValueError(f"offset must be a number, got {offset!r}")
    return xt, w


def rmsnorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float = 0.0,
    cast_before_weight: bool = True,
    out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dim: ``(offset + weight) * x / rms(x)``, in float32, cast to x.dtype.

    ``cast_before_weight=True``: HF LlamaRMSNorm (round normalised x to x.dtype, then
    multiply by the weight). ``False``: HF Gemma (multiply in float32, round once).
    """
    x, weight = _check_norm(x, weight, eps, offset)
    if out is not None:
        _checks.out_like("out", out, x)
    if not use_triton(x, backend):
        from minisgl_kernels import reference

        y = reference.rmsnorm(x, weight, eps, offset=offset, cast_before_weight=cast_before_weight)
        return y if out is None else out.copy_(y)
    import torch

    from minisgl_kernels.norm_launch import rmsnorm_triton

    y = torch.empty_like(x) if out is None else out
    rmsnorm_triton(x, weight, eps, offset=offset, cast_before_weight=cast_before_weight, out=y)
    return y


def add_rmsnorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    offset: float = 0.0,
    cast_before_weight: bool = True,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``s = x + residual`` (rounded to x.dtype) and ``rmsnorm(s)``; returns ``(normed, s)``.

    ``residual_out`` may be ``residual`` itself (in-place update) or ``x``.
    """
    x, weight = _check_norm(x, weight, eps, offset)
    residual = _checks.tensor("residual", residual, ndim=x.dim(), dtypes=_checks.FLOAT_DTYPES, device=x.device)
    _checks.dims("residual", residual, tuple(x.shape))
    _checks.same_dtype("residual", residual, "x", x)
    for name, buf in (("out", out), ("residual_out", residual_out)):
        if buf is not None:
            _checks.out_like(name, buf, x)
    if not use_triton(x, backend):
        from minisgl_kernels import reference

        y, s = reference.add_rmsnorm(x, residual, weight, eps, offset=offset, cast_before_weight=cast_before_weight)
        return (y if out is None else out.copy_(y)), (s if residual_out is None else residual_out.copy_(s))
    import torch

    from minisgl_kernels.norm_launch import rmsnorm_triton

    y = torch.empty_like(x) if out is None else out
    s = torch.empty_like(x) if residual_out is None else residual_out
    rmsnorm_triton(
        x,
        weight,
        eps,
        offset=offset,
        cast_before_weight=cast_before_weight,
        out=y,
        residual=residual,
        residual_out=s,
    )
    return y, s
