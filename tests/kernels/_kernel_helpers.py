"""Shared helpers for the kernel tests (devices, random data, tolerances, naive attention)."""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Triton runs on CPU only under the interpreter; CUDA runs are marked `gpu`.
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETING, reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
]
TOL = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def rand(*shape: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    """Random normal data (never zeros), made on CPU so every device sees the same values."""
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """No NaN anywhere, relative Frobenius error under ``tol``, max error under 10x tol."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert not torch.isnan(out).any(), "output has NaN (unwritten element?)"
    o, r = out.double().cpu(), ref.double().cpu()
    rel = ((o - r).norm() / r.norm().clamp_min(1e-30)).item()
    assert rel < tol, f"relative error {rel:.3g} >= {tol}"
    scale = r.abs().max().clamp_min(1.0).item()
    worst = (o - r).abs().max().item()
    assert worst < 10 * tol * scale, f"max abs error {worst:.3g} >= {10 * tol * scale:.3g}"


def indptr(lengths: list[int], device: str, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=dtype, device=device)


def naive_attention(
    q: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    q_req: list[int],
    q_pos: list[int],
    k_req: list[int],
    k_pos: list[int],
    *,
    scale: float,
    window: int | None,
    softcap: float | None,
) -> torch.Tensor:
    """Dense float64 softmax attention over the whole batch with an explicit mask.

    q [T, Hq, D]; keys/values: one [Hkv, D] tensor per key of the batch; a query sees a
    key of the same request whose position is <= its own (and inside the window).
    """
    kk = torch.stack(keys).double().cpu()
    vv = torch.stack(values).double().cpu()
    qq = q.double().cpu()
    group = qq.shape[1] // kk.shape[1]
    mask = torch.zeros(len(q_req), len(k_req), dtype=torch.bool)
    for i, (qr, qp) in enumerate(zip(q_req, q_pos, strict=True)):
        for j, (kr, kp) in enumerate(zip(k_req, k_pos, strict=True)):
            mask[i, j] = qr == kr and kp <= qp and (window is None or kp > qp - window)
    out = torch.zeros_like(qq)
    for h in range(qq.shape[1]):
        s = qq[:, h] @ kk[:, h // group].T * scale
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~mask, float("-inf"))
        e = torch.exp(s - s.max(dim=1, keepdim=True).values)
        out[:, h] = (e / e.sum(dim=1, keepdim=True)) @ vv[:, h // group]
    return out
