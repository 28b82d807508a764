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

# (kv lens, Hq, Hkv, D, window, softcap, dtype); on CUDA lengths are x16
DECODE_CASES = [
    ([50, 1, 33], 4, 4, 64, None, None, torch.float32),
    ([70, 16, 3], 8, 1, 128, None, None, torch.bfloat16),
    ([45, 9, 60], 8, 2, 64, 9, 10.0, torch.float16),
    ([0, 21], 4, 1, 64, None, 3.0, torch.bfloat16),
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


def extend_inputs(case: tuple, device: str, seed: int) -> dict:
    """Random extend inputs for case (lens, prefix lens or None, Hq, Hkv, D, window, softcap,
    dtype); on CUDA the lengths are multiplied by 8 so that several blocks are used."""
    lens, prefix, hq, hkv, d, _, _, dtype = case
    if device == "cuda":
        lens = [8 * n for n in lens]
        prefix = None if prefix is None else [8 * n for n in prefix]
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    inputs = {
        "q": rand(total, hq, d, dtype=dtype, device=device, gen=gen),
        "k": rand(total, hkv, d, dtype=dtype, device=device, gen=gen),
        "v": rand(total, hkv, d, dtype=dtype, device=device, gen=gen),
        "cu_seqlens_q": indptr(lens, device),
        "max_len": max(lens),
    }
    if prefix is not None:
        num_slots = sum(prefix) + 29
        inputs["k_cache"] = rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen)
        inputs["v_cache"] = rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen)
        inputs["prefix_indptr"] = indptr(prefix, device, torch.int64)
        inputs["prefix_slots"] = torch.randperm(num_slots, generator=gen)[: sum(prefix)].to(device)
    return inputs


def decode_inputs(case: tuple, device: str, seed: int, index_dtype: torch.dtype) -> dict:
    """Random decode inputs for case (kv lens, Hq, Hkv, D, window, softcap, dtype); on CUDA
    the lengths are multiplied by 16."""
    lens, hq, hkv, d, _, _, dtype = case
    if device == "cuda":
        lens = [16 * n for n in lens]
    gen = torch.Generator().manual_seed(seed)
    num_slots = sum(lens) + 37
    return {
        "q": rand(len(lens), hq, d, dtype=dtype, device=device, gen=gen),
        "k_cache": rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen),
        "v_cache": rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen),
        "kv_indptr": indptr(lens, device, index_dtype),
        "kv_slots": torch.randperm(num_slots, generator=gen)[: sum(lens)].to(device, index_dtype),
    }
