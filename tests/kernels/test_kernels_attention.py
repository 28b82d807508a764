"""Triton extend/decode attention and KV store against the torch references."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import (
    DECODE_CASES,
    DEVICES,
    TOL,
    assert_close,
    decode_inputs,
    extend_inputs,
    indptr,
    poisoned,
    rand,
)

import minisgl_kernels as kernels
from minisgl_kernels import attention_launch, reference
from minisgl_kernels.options import AttentionOptions

# (lens, prefix lens or None, Hq, Hkv, D, window, softcap, dtype); on CUDA lengths are x8
EXTEND_CASES = [
    ([37, 1, 20], None, 2, 2, 64, None, None, torch.float32),
    ([33, 1, 17], None, 8, 2, 128, None, None, torch.bfloat16),
    ([20, 1, 0, 9], [19, 40, 3, 0], 8, 1, 64, None, None, torch.bfloat16),
    ([26, 5], [21, 2], 2, 2, 64, 12, None, torch.float16),
    ([40, 3], None, 4, 1, 128, None, 5.0, torch.float32),
    ([18, 30], [9, 25], 4, 1, 64, 7, 20.0, torch.bfloat16),
    ([1, 1, 1], [5, 0, 17], 4, 1, 64, None, None, torch.float32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", EXTEND_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-d{c[4]}-w{c[5]}-c{c[6]}")
def test_extend_attention(device: str, case: tuple) -> None:
    window, softcap = case[5], case[6]
    inp = extend_inputs(case, device, seed=len(case[0]) * 7 + case[4])
    max_len = inp.pop("max_len")
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    got = kernels.extend_attention(
        **inp, opts=AttentionOptions(0.11, window, softcap), max_seqlen_q=max_len, out=out, backend="triton"
    )
    want = kernels.extend_attention(**inp, opts=AttentionOptions(0.11, window, softcap), backend="torch")
    assert got is out
    assert_close(got, want, TOL[inp["q"].dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("window", [None, 100])
def test_extend_attention_head_dim_256_cuda(window: int | None) -> None:
    case = ([37, 130], [50, 0], 4, 2, 256, window, None, torch.bfloat16)
    inp = extend_inputs(case, "cuda", seed=256)
    inp.pop("max_len")
    got = kernels.extend_attention(**inp, opts=AttentionOptions(0.0625, window), backend="triton")
    want = kernels.extend_attention(**inp, opts=AttentionOptions(0.0625, window), backend="torch")
    assert_close(got, want, TOL[torch.bfloat16])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-d{c[3]}-w{c[4]}-c{c[5]}")
@pytest.mark.parametrize("num_splits", [None, 1, 5])
def test_decode_attention(device: str, case: tuple, num_splits: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if device == "cpu" and num_splits == 5:  # the kernel variant without slot prefetch
        monkeypatch.setitem(attention_launch.INTERPRET_DECODE, "PREFETCH_SLOTS", 0)
    window, softcap = case[4], case[5]
    index_dtype = torch.int64 if num_splits == 5 else torch.int32
    inp = decode_inputs(case, device, seed=case[1] * 13 + case[3], index_dtype=index_dtype)
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    got = kernels.decode_attention(
        **inp, opts=AttentionOptions(0.2, window, softcap), num_splits=num_splits, out=out, backend="triton"
    )
    want = kernels.decode_attention(**inp, opts=AttentionOptions(0.2, window, softcap), backend="torch")
    assert got is out
    assert_close(got, want, TOL[inp["q"].dtype])
    if case[0][0] == 0:
        assert torch.equal(got[0], torch.zeros_like(got[0]))


@pytest.mark.parametrize("device", DEVICES)
def test_decode_equals_extend_of_last_token(device: str) -> None:
    """Two kernels, one function: decode of the last token == extend with the rest as prefix."""
    case = ([23, 40], 8, 2, 64, 11, None, torch.float32)
    inp = decode_inputs(case, device, seed=9, index_dtype=torch.int32)
    lens = [23, 40] if device == "cpu" else [16 * 23, 16 * 40]
    dec = kernels.decode_attention(**inp, opts=AttentionOptions(0.3, 11), backend="triton")
    bounds = inp["kv_indptr"].tolist()
    last = torch.tensor([bounds[1] - 1, bounds[2] - 1], device=device).long()
    keep = torch.ones(sum(lens), dtype=torch.bool, device=device)
    keep[last] = False
    slots = inp["kv_slots"].long()
    ext = kernels.extend_attention(
        inp["q"],
        inp["k_cache"][slots[last]],
        inp["v_cache"][slots[last]],
        indptr([1, 1], device),
        inp["k_cache"],
        inp["v_cache"],
        indptr([n - 1 for n in lens], device),
        slots[keep],
        opts=AttentionOptions(0.3, 11),
        backend="triton",
    )
    assert_close(dec, ext, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "hkv", "d"), [(torch.bfloat16, 2, 64), (torch.float32, 3, 128)])
def test_store_kv(device: str, dtype: torch.dtype, hkv: int, d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    k, v = (rand(5, hkv, d, dtype=dtype, device=device, gen=gen) for _ in range(2))
    k_cache, v_cache = (rand(12, hkv, d, dtype=dtype, device=device, gen=gen) for _ in range(2))
    slots = torch.tensor([7, -1, 0, 11, 3], device=device)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    reference.store_kv(k, v, want_k, want_v, slots)
    kernels.store_kv(k, v, k_cache, v_cache, slots, backend="triton")
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
