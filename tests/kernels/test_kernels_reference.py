"""The torch references against independent formulas: HF's RMSNorm and naive dense attention."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import assert_close, indptr, naive_attention

import minisgl_kernels as kernels
from minisgl_kernels import reference
from minisgl_kernels.options import AttentionOptions


def hf_llama_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Transcribed from transformers' LlamaRMSNorm.forward."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def hf_gemma_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Transcribed from transformers' Gemma3RMSNorm.forward (weight stored without the +1)."""
    out = x.float()
    out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + eps)
    out = out * (1.0 + weight.float())
    return out.type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [1, 96, 257])
def test_rmsnorm_reference_matches_hf(dtype: torch.dtype, hidden: int) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x = (torch.randn(7, hidden, generator=gen) * 3).to(dtype)
    w = torch.randn(hidden, generator=gen).to(dtype)
    llama = reference.rmsnorm(x, w, 1e-5)
    gemma = reference.rmsnorm(x, w, 1e-6, offset=1.0, cast_before_weight=False)
    if dtype == torch.float32:
        torch.testing.assert_close(llama, hf_llama_rmsnorm(x, w, 1e-5), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gemma, hf_gemma_rmsnorm(x, w, 1e-6), atol=1e-6, rtol=1e-6)
    else:  # same operations in the same order: bit-identical
        assert torch.equal(llama, hf_llama_rmsnorm(x, w, 1e-5))
        assert torch.equal(gemma, hf_gemma_rmsnorm(x, w, 1e-6))


def test_add_rmsnorm_reference_matches_hf_residual_then_norm() -> None:
    gen = torch.Generator().manual_seed(1)
    x, r = (torch.randn(5, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    w = torch.randn(64, generator=gen).to(torch.bfloat16)
    y, s = reference.add_rmsnorm(x, r, w, 1e-6)
    assert torch.equal(s, r + x)  # HF: hidden_states = residual + hidden_states
    assert torch.equal(y, hf_llama_rmsnorm(r + x, w, 1e-6))


def test_rmsnorm_reference_matches_transformers_classes() -> None:
    llama_mod = pytest.importorskip("transformers.models.llama.modeling_llama")
    gemma_mod = pytest.importorskip("transformers.models.gemma3.modeling_gemma3")
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 80, generator=gen)
    w = torch.randn(80, generator=gen)
    llama = llama_mod.LlamaRMSNorm(80, eps=1e-6)
    gemma = gemma_mod.Gemma3RMSNorm(80, eps=1e-6)
    with torch.no_grad():
        llama.weight.copy_(w)
        gemma.weight.copy_(w)
        torch.testing.assert_close(reference.rmsnorm(x, w, 1e-6), llama(x), atol=1e-6, rtol=1e-6)
        got = reference.rmsnorm(x, w, 1e-6, offset=1.0, cast_before_weight=False)
        torch.testing.assert_close(got, gemma(x), atol=1e-6, rtol=1e-6)


def _extend_case(seed: int, lens: list[int], prefix: list[int], hq: int, hkv: int, d: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    total = sum(lens)
    num_slots = sum(prefix) + 11
    slots = torch.randperm(num_slots, generator=gen)[: sum(prefix)]
    return {
        "q": torch.randn(total, hq, d, generator=gen),
        "k": torch.randn(total, hkv, d, generator=gen),
        "v": torch.randn(total, hkv, d, generator=gen),
        "k_cache": torch.randn(num_slots, hkv, d, generator=gen),
        "v_cache": torch.randn(num_slots, hkv, d, generator=gen),
        "cu": indptr(lens, "cpu"),
        "pi": indptr(prefix, "cpu"),
        "slots": slots,
    }


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (5, None), (None, 2.0), (9, 30.0)])
@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (4, 1)])
@pytest.mark.parametrize("d", [16, 8])  # any head_dim: 8 is a tiny test model's
def test_extend_reference_matches_naive(window: int | None, softcap: float | None, hq: int, hkv: int, d: int) -> None:
    lens, prefix = [6, 1, 13], [4, 7, 0]
    c = _extend_case(3, lens, prefix, hq, hkv, d)
    got = kernels.extend_attention(  # the public entry point: its checks must accept any d
        c["q"],
        c["k"],
        c["v"],
        c["cu"],
        c["k_cache"],
        c["v_cache"],
        c["pi"],
        c["slots"],
        opts=AttentionOptions(0.3, window, softcap),
        backend="torch",
    )
    keys, values, k_req, k_pos, q_req, q_pos = [], [], [], [], [], []
    t = 0
    for b, (n, p) in enumerate(zip(lens, prefix, strict=True)):
        for j in range(p):
            slot = int(c["slots"][sum(prefix[:b]) + j])
            keys.append(c["k_cache"][slot])
            values.append(c["v_cache"][slot])
            k_req.append(b)
            k_pos.append(j)
        for i in range(n):
            keys.append(c["k"][t + i])
            values.append(c["v"][t + i])
            k_req.append(b)
            k_pos.append(p + i)
            q_req.append(b)
            q_pos.append(p + i)
        t += n
    want = naive_attention(c["q"], keys, values, q_req, q_pos, k_req, k_pos, scale=0.3, window=window, softcap=softcap)
    assert_close(got, want.float(), 1e-6)


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (3, 5.0)])
@pytest.mark.parametrize("d", [16, 8])
def test_decode_reference_matches_naive(window: int | None, softcap: float | None, d: int) -> None:
    gen = torch.Generator().manual_seed(4)
    lens, hq, hkv = [5, 1, 12], 4, 2
    k_cache, v_cache = torch.randn(40, hkv, d, generator=gen), torch.randn(40, hkv, d, generator=gen)
    slots = torch.randperm(40, generator=gen)[: sum(lens)]
    q = torch.randn(len(lens), hq, d, generator=gen)
    got = kernels.decode_attention(
        q,
        k_cache,
        v_cache,
        indptr(lens, "cpu"),
        slots,
        opts=AttentionOptions(0.5, window, softcap),
        backend="torch",
    )
    keys, values, k_req, k_pos = [], [], [], []
    off = 0
    for b, n in enumerate(lens):
        for j in range(n):
            keys.append(k_cache[int(slots[off + j])])
            values.append(v_cache[int(slots[off + j])])
            k_req.append(b)
            k_pos.append(j)
        off += n
    q_pos = [n - 1 for n in lens]
    want = naive_attention(
        q,
        keys,
        values,
        list(range(len(lens))),
        q_pos,
        k_req,
        k_pos,
        scale=0.5,
        window=window,
        softcap=softcap,
    )
    assert_close(got, want.float(), 1e-6)


def test_decode_reference_zero_length_request_gives_zeros() -> None:
    q = torch.randn(2, 2, 16)
    cache = torch.randn(4, 1, 16)
    out = reference.decode_attention(
        q, cache, cache, torch.tensor([0, 0, 3]), torch.tensor([2, 0, 1]), opts=AttentionOptions(1.0)
    )
    assert torch.equal(out[0], torch.zeros(2, 16)) and out[1].abs().sum() > 0


def test_store_kv_reference_scatters_and_skips_negative_slots() -> None:
    k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    kc, vc = torch.randn(6, 2, 16), torch.randn(6, 2, 16)
    before_k, before_v = kc.clone(), vc.clone()
    reference.store_kv(k, v, kc, vc, torch.tensor([4, -1, 0]))
    assert torch.equal(kc[4], k[0]) and torch.equal(kc[0], k[2]) and torch.equal(vc[4], v[0])
    untouched = [1, 2, 3, 5]
    assert torch.equal(kc[untouched], before_k[untouched]) and torch.equal(vc[untouched], before_v[untouched])
