"""Triton kernels at head dims that are not powers of two (padded feature block, masked).

Each case compares the Triton path with the torch reference on random data, the output
poisoned with NaN first, so an unwritten or wrongly masked feature fails.
"""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, decode_inputs, extend_inputs, poisoned, rand

import minisgl_kernels as kernels
from minisgl_kernels import reference
from minisgl_kernels.options import AttentionOptions

# (lens, prefix lens, Hq, Hkv, D, window, softcap, dtype); on CUDA lengths are x8.
# Every case has a cached prefix, a length-1 request and one longer than a query block.
EXTEND_CASES = [
    ([9, 1, 20], [7, 0, 12], 4, 1, 24, None, None, torch.bfloat16),
    ([17, 1], [5, 11], 2, 2, 80, 6, 15.0, torch.float16),
    ([1, 18, 6], [0, 3, 10], 8, 2, 96, None, None, torch.float32),
    ([19, 1], [3, 2], 2, 1, 8, None, None, torch.float32),  # below tl.dot's minimum of 16
]
# (kv lens, Hq, Hkv, D, window, softcap, dtype); on CUDA lengths are x16. GQA ratio 4.
DECODE_CASES = [
    ([40, 1, 0], 8, 2, 24, None, None, torch.bfloat16),
    ([33, 1, 50], 8, 2, 80, 10, 8.0, torch.float16),
    ([1, 45], 8, 2, 96, None, 20.0, torch.float32),
    ([7, 20], 4, 1, 8, 5, None, torch.bfloat16),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", EXTEND_CASES, ids=lambda c: f"d{c[4]}-{c[7]}-w{c[5]}-c{c[6]}")
def test_extend_attention_padded_head_dim(device: str, case: tuple) -> None:
    window, softcap = case[5], case[6]
    inp = extend_inputs(case, device, seed=case[4])
    max_len = inp.pop("max_len")
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    got = kernels.extend_attention(
        **inp, opts=AttentionOptions(0.12, window, softcap), max_seqlen_q=max_len, out=out, backend="triton"
    )
    want = kernels.extend_attention(**inp, opts=AttentionOptions(0.12, window, softcap), backend="torch")
    assert got is out
    assert_close(got, want, TOL[inp["q"].dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"d{c[3]}-{c[6]}-w{c[4]}-c{c[5]}")
def test_decode_attention_padded_head_dim(device: str, case: tuple) -> None:
    window, softcap = case[4], case[5]
    inp = decode_inputs(case, device, seed=case[3] + 1, index_dtype=torch.int32)
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    got = kernels.decode_attention(  # 3 splits: the combine pass merges several partials
        **inp, opts=AttentionOptions(0.15, window, softcap), num_splits=3, out=out, backend="triton"
    )
    want = kernels.decode_attention(**inp, opts=AttentionOptions(0.15, window, softcap), backend="torch")
    assert got is out
    assert_close(got, want, TOL[inp["q"].dtype])
    if case[0][-1] == 0:  # empty request: exact zeros, padded features never stored
        assert torch.equal(got[-1], torch.zeros_like(got[-1]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [24, 80, 96])
def test_store_kv_padded_head_dim(device: str, d: int) -> None:
    gen = torch.Generator().manual_seed(d)
    k, v = (rand(5, 3, d, dtype=torch.bfloat16, device=device, gen=gen) for _ in range(2))
    # the caches are views into wider rows: a write past feature d would hit the sentinel
    k_rows, v_rows = (rand(12, 3, d + 8, dtype=torch.bfloat16, device=device, gen=gen) for _ in range(2))
    k_cache, v_cache = k_rows[..., :d], v_rows[..., :d]
    slots = torch.tensor([7, -1, 0, 11, 3], device=device)
    want_k, want_v = k_rows.clone(), v_rows.clone()
    reference.store_kv(k, v, want_k[..., :d], want_v[..., :d], slots)
    kernels.store_kv(k, v, k_cache, v_cache, slots, backend="triton")
    assert torch.equal(k_rows, want_k) and torch.equal(v_rows, want_v)
