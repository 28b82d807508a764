"""Few-row GEMV entry point: argument checks, then Triton or the torch reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from minisgl_kernels import _checks
from minisgl_kernels._dispatch import Backend, use_triton

if TYPE_CHECKING:
    import torch


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: Backend | None = None,
) -> torch.Tensor:
    """``y[M, N] = x[M, K] @ weight[N, K]^T (+ bias[N])``, float32 accumulation, one rounding.

    Built for decode (M up to 16 in one program row block; any M works). The weight is
    row-major as ``torch.nn.Linear`` stores it (any row stride, contiguous rows).
    """
    import torch

    xt = _checks.tensor("x", x, ndim=2, dtypes=_checks.FLOAT_DTYPES)
    w = _checks.tensor("weight", weight, ndim=2, dtypes=_checks.FLOAT_DTYPES, device=xt.device)
    _checks.same_dtype("weight", w, "x", xt)
    _checks.dims("weight", w, (None, xt.shape[1]))
    if bias is not None:
        b = _checks.tensor("bias", bias, ndim=1, dtypes=_checks.FLOAT_DTYPES, device=xt.device)
        _checks.same_dtype("bias", b, "x", xt)
        _checks.dims("bias", b, (w.shape[0],))
    shape = (xt.shape[0], w.shape[0])
    if out is not None:
        o = _checks.tensor("out", out, ndim=2, dtypes=_checks.FLOAT_DTYPES, device=xt.device)
        _checks.dims("out", o, shape)
        _checks.same_dtype("out", o, "x", xt)
    if not use_triton(xt, backend):
        from minisgl_kernels import reference

        y = reference.gemv(xt, w, bias)
        return y if out is None else out.copy_(y)
    from minisgl_kernels.gemv_launch import gemv_triton

    y = torch.empty(shape, dtype=xt.dtype, device=xt.device) if out is None else out
    gemv_triton(xt, w, bias, y)
    return y
