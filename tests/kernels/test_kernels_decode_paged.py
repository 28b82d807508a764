"""Decode attention reading slots from a request table (the CUDA-graph form) against the
slot-list decode and the naive float64 attention."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, indptr, naive_attention, poisoned, rand

import minisgl_kernels as kernels
from minisgl_kernels.options import AttentionOptions


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("window", "softcap", "num_splits"), [(None, None, None), (5, 30.0, 3), (None, None, 1)])
def test_paged_decode_matches_slot_list_decode(
    device: str, dtype: torch.dtype, window: int | None, softcap: float | None, num_splits: int | None
) -> None:
    lens = [7, 0, 19, 1, 12]  # a padded row (0) gives zeros
    if device == "cuda":
        lens = [16 * n for n in lens]
    hq, hkv, d, width = 8, 2, 32, max(lens) + 5
    gen = torch.Generator().manual_seed(sum(lens) + (window or 0))
    num_slots = sum(lens) + 40
    k_cache = rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen)
    v_cache = rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen)
    table = torch.zeros(9, width, dtype=torch.int32)
    rows = torch.tensor([6, 0, 2, 8, 3])
    perm = torch.randperm(num_slots, generator=gen)
    slot_lists, at = [], 0
    for r, n in zip(rows.tolist(), lens, strict=True):
        table[r, :n] = perm[at : at + n].int()
        table[r, n:] = perm[-1].int()  # garbage past the length must be ignored
        slot_lists.append(perm[at : at + n])
        at += n
    q = rand(len(lens), hq, d, dtype=dtype, device=device, gen=gen)
    args = {"opts": AttentionOptions(0.15, window, softcap)}
    out = poisoned(q.shape, dtype, device)
    got = kernels.decode_attention_paged(
        q,
        k_cache,
        v_cache,
        table.to(device),
        rows.to(device),
        torch.tensor(lens).to(device),
        num_splits=num_splits,
        out=out,
        backend="triton",
        **args,
    )
    assert got is out
    want = kernels.decode_attention(
        q, k_cache, v_cache, indptr(lens, device), torch.cat(slot_lists).to(device), backend="torch", **args
    )
    assert_close(got, want, TOL[dtype])
    assert torch.all(got[1] == 0)
    b = 2  # one request against the naive float64 attention
    keys = list(k_cache[slot_lists[b].to(device)])
    values = list(v_cache[slot_lists[b].to(device)])
    n = lens[b]
    naive = naive_attention(
        q[b : b + 1], keys, values, [0], [n - 1], [0] * n, list(range(n)), scale=0.15, window=window, softcap=softcap
    )
    assert_close(got[b : b + 1].double().cpu(), naive, TOL[dtype])


def test_paged_reference_rejects_lengths_past_the_table() -> None:
    q = torch.randn(1, 2, 8)
    kc = torch.randn(4, 1, 8)
    with pytest.raises(ValueError, match="seq_lens must be in"):
        kernels.decode_attention_paged(
            q,
            kc,
            kc,
            torch.zeros(2, 3, dtype=torch.int32),
            torch.tensor([0]),
            torch.tensor([4]),
            opts=AttentionOptions(0.3),
        )
