"""Triton few-row GEMV against the torch reference and torch matmul (CPU interpreter or CUDA)."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, assert_close, poisoned, rand
from torch.nn import functional as F

import minisgl_kernels as kernels
from minisgl_kernels import reference

# relative Frobenius error; bf16 allows the interpreter's round-toward-zero (README)
GEMV_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# rows: 1 (the one-row path), 2..8 (broadcast-reduce), 9..16 (tensor-core dot), 19 (two row blocks)
ROWS = [1, 2, 3, 5, 8, 9, 16, 19]
SHAPES = [(37, 53), (16, 64), (5, 130)]  # (N, K): odd N, K not a multiple of the K block, N < BLOCK_N


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_reference(device: str, dtype: torch.dtype, rows: int, n: int, k: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + n * 10 + k)
    x = rand(rows, k, dtype=dtype, device=device, gen=gen)
    w = rand(n, k, dtype=dtype, device=device, gen=gen)
    b = rand(n, dtype=dtype, device=device, gen=gen) if with_bias else None
    out = poisoned((rows, n), dtype, device)
    got = kernels.gemv(x, w, b, out=out, backend="triton")
    assert got is out
    assert_close(got, reference.gemv(x, w, b), GEMV_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [1, 4, 16])
def test_gemv_fp32_equals_torch_matmul(device: str, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x = rand(rows, 200, dtype=torch.float32, device=device, gen=gen)
    w = rand(33, 200, dtype=torch.float32, device=device, gen=gen)
    b = rand(33, dtype=torch.float32, device=device, gen=gen)
    torch.testing.assert_close(kernels.gemv(x, w, b, backend="triton"), F.linear(x, w, b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 12])
def test_gemv_16bit_close_to_torch_matmul(device: str, dtype: torch.dtype, rows: int) -> None:
    """Within one rounding of the 16-bit output of torch's own matmul."""
    gen = torch.Generator().manual_seed(7 + rows)
    x = rand(rows, 96, dtype=dtype, device=device, gen=gen)
    w = rand(40, 96, dtype=dtype, device=device, gen=gen) / 8
    got = kernels.gemv(x, w, backend="triton").float()
    want = F.linear(x, w).float()
    ulp = torch.finfo(dtype).eps * want.abs().clamp_min(1.0)
    assert ((got - want).abs() <= 2 * ulp).all(), (got - want).abs().max()


@pytest.mark.parametrize("device", DEVICES)
def test_gemv_strided_rows(device: str) -> None:
    """Views into larger buffers (a fused projection's slice of weight rows and columns; x rows
    with padding) use their row strides."""
    gen = torch.Generator().manual_seed(3)
    big_w = rand(50, 90, dtype=torch.float32, device=device, gen=gen)
    big_x = rand(6, 100, dtype=torch.float32, device=device, gen=gen)
    w, x = big_w[10:41, :70], big_x[::2, :70]
    assert not w.is_contiguous() and not x.is_contiguous()
    got = kernels.gemv(x, w, backend="triton")
    torch.testing.assert_close(got, x.contiguous() @ w.contiguous().t(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 7])
def test_gemv_short_k(device: str, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    x = rand(2, k, dtype=torch.float32, device=device, gen=gen)
    w = rand(9, k, dtype=torch.float32, device=device, gen=gen)
    b = rand(9, dtype=torch.float32, device=device, gen=gen)
    torch.testing.assert_close(kernels.gemv(x, w, b, backend="triton"), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_gemv_torch_backend_is_the_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    x = rand(3, 20, dtype=torch.bfloat16, device="cpu", gen=gen)
    w = rand(11, 20, dtype=torch.bfloat16, device="cpu", gen=gen)
    want = (x.float() @ w.float().t()).to(torch.bfloat16)
    torch.testing.assert_close(kernels.gemv(x, w, backend="torch"), want, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "match"),
    [
        ((2, 8), (4, 9), None, "weight must have shape"),
        ((2, 8, 1), (4, 8), None, "x must have 2 dimensions"),
        ((2, 8), (4, 8), (5,), "bias must have shape"),
    ],
)
def test_gemv_rejects_bad_shapes(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], b_shape: tuple[int, ...] | None, match: str
) -> None:
    b = None if b_shape is None else torch.zeros(b_shape)
    with pytest.raises(ValueError, match=match):
        kernels.gemv(torch.zeros(x_shape), torch.zeros(w_shape), b, backend="torch")


def test_gemv_rejects_mixed_dtypes() -> None:
    with pytest.raises(ValueError, match="weight has dtype bfloat16 but x has float32"):
        kernels.gemv(torch.zeros(2, 8), torch.zeros(4, 8, dtype=torch.bfloat16), backend="torch")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 13])
def test_gemv_every_config(device: str, rows: int) -> None:
    """Each config the autotuner may pick for the rows bucket (the other tests pin one), with a
    K tail; on CUDA at a decode-like shape, then the autotuned launch itself."""
    from minisgl_kernels import gemv_launch
    from minisgl_kernels._util import cdiv

    cuda = device == "cuda"
    n, k = (520, 1000) if cuda else (40, 300)
    dtype = torch.bfloat16 if cuda else torch.float16  # (the interpreter's bf16 dot is wrong)
    gen = torch.Generator().manual_seed(rows)
    x = rand(rows, k, dtype=dtype, device=device, gen=gen)
    w = rand(n, k, dtype=dtype, device=device, gen=gen) / 16
    b = rand(n, dtype=dtype, device=device, gen=gen)
    want = reference.gemv(x, w, b)
    args = (x, w, b, None, rows, n, k, x.stride(0), w.stride(0), n)
    meta = {"HAS_BIAS": True, "EVICT": "evict_first" if cuda else "", "UPCAST": False}
    bucket = gemv_launch.block_m_for(rows)
    for cfg in gemv_launch._CONFIGS[bucket]:
        out = poisoned((rows, n), dtype, device)
        grid = (cdiv(n, cfg.kwargs["BLOCK_N"]), cdiv(rows, cfg.kwargs["BLOCK_M"]))
        launch = {**meta, **cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        gemv_launch._PLAIN[grid](*args[:3], out, *args[4:], **launch)
        assert_close(out, want, GEMV_TOL[dtype])
    if cuda:
        out = poisoned((rows, n), dtype, device)
        gemv_launch._TUNED[bucket][lambda c: (cdiv(n, c["BLOCK_N"]), cdiv(rows, c["BLOCK_M"]))](
            *args[:3], out, *args[4:], **meta
        )
        assert_close(out, want, GEMV_TOL[dtype])
