"""Triton RMSNorm / add+RMSNorm against the torch reference (CPU interpreter or CUDA)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, poisoned, rand

import minisgl_kernels as kernels
from minisgl_kernels import reference

NORM_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("rows", "hidden"), [(1, 64), (9, 100), (3, 1000), (2, 4096)])
@pytest.mark.parametrize(("offset", "cast_before_weight"), [(0.0, True), (1.0, False)])
def test_rmsnorm(
    device: str, dtype: torch.dtype, rows: int, hidden: int, offset: float, cast_before_weight: bool
) -> None:
    gen = torch.Generator().manual_seed(rows * hidden)
    x = rand(rows, hidden, dtype=dtype, device=device, gen=gen) * 4
    w = rand(hidden, dtype=dtype, device=device, gen=gen)
    out = poisoned((rows, hidden), dtype, device)
    got = kernels.rmsnorm(x, w, 1e-6, offset=offset, cast_before_weight=cast_before_weight, out=out, backend="triton")
    assert got is out
    want = reference.rmsnorm(x, w, 1e-6, offset=offset, cast_before_weight=cast_before_weight)
    assert_close(got, want, NORM_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_rmsnorm_fp32_matches_hf_llama_formula_to_1e6(device: str) -> None:
    gen = torch.Generator().manual_seed(5)
    x = rand(6, 333, dtype=torch.float32, device=device, gen=gen) * 10
    w = rand(333, dtype=torch.float32, device=device, gen=gen)
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)  # HF LlamaRMSNorm in fp32
    got = kernels.rmsnorm(x, w, 1e-5, backend="triton")
    torch.testing.assert_close(got, w * h, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [48, 4096])
@pytest.mark.parametrize("in_place", [False, True])
def test_add_rmsnorm(device: str, dtype: torch.dtype, hidden: int, in_place: bool) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x = rand(2, 3, hidden, dtype=dtype, device=device, gen=gen)  # 3-D: leading dims are rows
    residual = rand(2, 3, hidden, dtype=dtype, device=device, gen=gen) * 2
    w = rand(hidden, dtype=dtype, device=device, gen=gen)
    want_y, want_s = reference.add_rmsnorm(x, residual, w, 1e-6, offset=0.5)
    out = poisoned(x.shape, dtype, device)
    res_out = residual if in_place else poisoned(x.shape, dtype, device)
    y, s = kernels.add_rmsnorm(x, residual, w, 1e-6, offset=0.5, out=out, residual_out=res_out, backend="triton")
    assert y is out and s is res_out
    if device == "cpu" and dtype == torch.bfloat16:
        # Triton's interpreter rounds fp32 -> bf16 toward zero (the GPU rounds to nearest even)
        torch.testing.assert_close(s, want_s, atol=0.0, rtol=2.0**-7)
    else:
        assert torch.equal(s, want_s)  # one rounding of an fp32 sum: exact
    assert_close(y, want_y, NORM_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_rmsnorm_strided_rows(device: str) -> None:
    gen = torch.Generator().manual_seed(6)
    base = rand(5, 200, dtype=torch.bfloat16, device=device, gen=gen)
    x = base[:, 30:150]  # row stride 200, last dim contiguous
    w = rand(120, dtype=torch.bfloat16, device=device, gen=gen)
    assert_close(kernels.rmsnorm(x, w, 1e-6, backend="triton"), reference.rmsnorm(x, w, 1e-6), TOL[x.dtype])


def test_rmsnorm_dispatch_uses_torch_on_cpu_by_default() -> None:
    x = torch.randn(3, 16)
    w = torch.randn(16)
    assert torch.equal(kernels.rmsnorm(x, w, 1e-6), reference.rmsnorm(x, w, 1e-6))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: (torch.randn(2, 8), torch.randn(9)), "weight must have shape"),
        (lambda: (torch.randn(2, 8).int(), torch.randn(8)), "x must have dtype"),
        (lambda: (torch.randn(8, 2).T, torch.randn(8)), "contiguous in its last dimension"),
        (lambda: (torch.randn(2, 8), torch.randn(8, 1)), "weight must have 1 dimensions"),
    ],
)
def test_rmsnorm_rejects_bad_arguments(make: Callable[[], tuple[torch.Tensor, ...]], message: str) -> None:
    x, w = make()
    with pytest.raises(ValueError, match=message):
        kernels.rmsnorm(x, w, 1e-6)


def test_add_rmsnorm_rejects_mismatched_residual() -> None:
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match="residual must have shape"):
        kernels.add_rmsnorm(x, torch.randn(3, 8), w, 1e-6)
    with pytest.raises(ValueError, match="residual has dtype"):
        kernels.add_rmsnorm(x, torch.randn(2, 8, dtype=torch.float64).float().half(), w, 1e-6)
    with pytest.raises(ValueError, match="out must match"):
        kernels.add_rmsnorm(x, torch.randn(2, 8), w, 1e-6, out=torch.empty(2, 8, dtype=torch.half))


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="backend must be"):
        kernels.rmsnorm(torch.randn(2, 8), torch.randn(8), 1e-6, backend="cuda")  # type: ignore[arg-type]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("evict_first", "prefetch"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_persistent_grid(device: str, evict_first: bool, prefetch: bool, residual: bool) -> None:
    """The persistent kernel (each program loops over row tiles) against the reference."""
    from minisgl_kernels.norm_launch import rmsnorm_triton

    rows, hidden, dtype = (13, 4096, torch.bfloat16) if device == "cuda" else (11, 160, torch.float32)
    per_sm = 1 if device == "cpu" else 0
    gen = torch.Generator().manual_seed(rows + residual)
    if device == "cuda":  # more rows than programs: every program loops
        rows, per_sm = 3 * 132 * 4 + 5, 1
    x = rand(rows, hidden, dtype=dtype, device=device, gen=gen) * 3
    r = rand(rows, hidden, dtype=dtype, device=device, gen=gen)
    w = rand(hidden, dtype=dtype, device=device, gen=gen)
    out = poisoned((rows, hidden), dtype, device)
    res_out = r.clone() if residual else None  # in place on a copy of the residual
    rmsnorm_triton(
        x,
        w,
        1e-6,
        offset=0.25,
        cast_before_weight=True,
        out=out,
        residual=res_out,
        residual_out=res_out,
        programs_per_sm=per_sm,
        evict_first=evict_first,
        prefetch=prefetch,
    )
    if residual:
        want_y, want_s = reference.add_rmsnorm(x, r, w, 1e-6, offset=0.25)
        assert res_out is not None
        torch.testing.assert_close(res_out, want_s, atol=0.0, rtol=2.0**-7)
    else:
        want_y = reference.rmsnorm(x, w, 1e-6, offset=0.25)
    assert_close(out, want_y, NORM_TOL[dtype])
