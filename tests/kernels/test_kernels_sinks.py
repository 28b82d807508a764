"""Attention sinks (one learned logit per query head in the softmax denominator): the torch
reference against a float64 formula written here, and the Triton extend and decode kernels
(split + reduce, one-launch fused, paged) against the reference."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, decode_inputs, extend_inputs, indptr, poisoned

import minisgl_kernels as kernels
from minisgl_kernels import attention_launch
from minisgl_kernels.options import AttentionOptions


def _sinks(hq: int, device: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(hq, generator=gen) * 2.0).to(device)


def _with_sinks_f64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, scale: float, window: int | None
) -> torch.Tensor:
    """One request without a prefix, float64: softmax over [scores | sink], the sink column dropped."""
    n, hq, _ = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(n, hq, v.shape[2], dtype=torch.float64)
    for h in range(hq):
        s = q[:, h].double() @ k[:, h // group].double().T * scale
        pos = torch.arange(n)
        ok = pos[None, :] <= pos[:, None]
        if window is not None:
            ok &= pos[None, :] > pos[:, None] - window
        s = s.masked_fill(~ok, float("-inf"))
        joined = torch.cat((s, sinks[h].double().expand(n, 1)), dim=1)
        p = torch.softmax(joined, dim=1)[:, :-1]
        out[:, h] = p @ v[:, h // group].double()
    return out


@pytest.mark.parametrize("window", [None, 3])
def test_reference_sinks_match_the_formula(window: int | None) -> None:
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(9, h, 16, generator=gen) for h in (4, 2, 2))
    sinks = _sinks(4, "cpu", 1)
    got = kernels.extend_attention(
        q, k, v, torch.tensor([0, 9]), opts=AttentionOptions(0.3, window, sinks=sinks), backend="torch"
    )
    want = _with_sinks_f64(q, k, v, sinks, 0.3, window)
    assert_close(got.double(), want, 1e-6)
    plain = kernels.extend_attention(q, k, v, torch.tensor([0, 9]), opts=AttentionOptions(0.3, window), backend="torch")
    assert (got - plain).abs().max() > 1e-3  # the sinks change the output
    # a very negative sink is no sink; a very large one takes all the mass
    low = AttentionOptions(0.3, window, sinks=torch.full((4,), -1e4))
    high = AttentionOptions(0.3, window, sinks=torch.full((4,), 1e4))
    assert_close(kernels.extend_attention(q, k, v, torch.tensor([0, 9]), opts=low, backend="torch"), plain, 1e-6)
    assert kernels.extend_attention(q, k, v, torch.tensor([0, 9]), opts=high, backend="torch").abs().max() == 0


def test_decode_reference_with_sinks_equals_extend_of_the_last_token() -> None:
    """The padded decode path and the per-request path agree (two code paths in the reference)."""
    case = ([7, 12, 1], 4, 2, 16, None, None, torch.float32)
    inp = decode_inputs(case, "cpu", seed=3, index_dtype=torch.int64)
    sinks = _sinks(4, "cpu", 2)
    opts = AttentionOptions(0.25, sinks=sinks)
    dec = kernels.decode_attention(**inp, opts=opts, backend="torch")
    bounds = inp["kv_indptr"].tolist()
    for b in range(3):
        slots = inp["kv_slots"][bounds[b] : bounds[b + 1]]
        k, v = inp["k_cache"][slots], inp["v_cache"][slots]
        q = torch.zeros(len(slots), 4, 16)
        q[-1] = inp["q"][b]
        want = _with_sinks_f64(q, k, v, sinks, 0.25, None)[-1]
        assert_close(dec[b].double(), want, 1e-6)


# (lens, prefix lens or None, Hq, Hkv, D, window, softcap, dtype)
EXTEND_CASES = [
    ([13, 1, 6], None, 4, 2, 16, None, None, torch.float32),
    ([9, 4], [11, 0], 4, 1, 32, 5, None, torch.float32),
    ([1, 1], [6, 0], 2, 2, 16, None, 5.0, torch.float32),
    ([10, 3], [4, 7], 4, 2, 16, None, None, torch.bfloat16),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", EXTEND_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-w{c[5]}-c{c[6]}")
def test_extend_kernel_with_sinks(device: str, case: tuple) -> None:
    inp = extend_inputs(case, device, seed=sum(case[0]))
    max_len = inp.pop("max_len")
    opts = AttentionOptions(0.2, case[5], case[6], sinks=_sinks(case[2], device, 4))
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    got = kernels.extend_attention(**inp, opts=opts, max_seqlen_q=max_len, out=out, backend="triton")
    want = kernels.extend_attention(**inp, opts=opts, backend="torch")
    assert_close(got, want, TOL[inp["q"].dtype] * (4 if inp["q"].dtype == torch.bfloat16 else 1))


DECODE_CASES = [  # (kv lens, Hq, Hkv, D, window, softcap, dtype)
    ([21, 1, 40], 4, 2, 16, None, None, torch.float32),
    ([30, 0, 9], 4, 1, 32, 7, 4.0, torch.float32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-w{c[4]}-c{c[5]}")
@pytest.mark.parametrize(("fused", "num_splits"), [(True, 1), (True, 3), (False, 1), (False, 4)])
def test_decode_kernels_with_sinks(device: str, case: tuple, fused: bool, num_splits: int) -> None:
    inp = decode_inputs(case, device, seed=len(case[0]) + num_splits, index_dtype=torch.int32)
    opts = AttentionOptions(0.3, case[4], case[5], sinks=_sinks(case[1], device, 6))
    out = poisoned(tuple(inp["q"].shape), inp["q"].dtype, device)
    attention_launch.decode_attention_triton(**inp, opts=opts, num_splits=num_splits, out=out, fused=fused)
    want = kernels.decode_attention(**inp, opts=opts, backend="torch")
    assert_close(out, want, TOL[inp["q"].dtype])
    if case[0][1] == 0:
        assert torch.all(out[1] == 0)  # an empty request stays 0


@pytest.mark.parametrize("device", DEVICES)
def test_paged_decode_with_sinks(device: str) -> None:
    lens, hq, hkv, d = [5, 12], 4, 2, 16
    gen = torch.Generator().manual_seed(8)
    cache = [torch.randn(32, hkv, d, generator=gen).to(device) for _ in range(2)]
    table = torch.randperm(32, generator=gen)[:24].reshape(2, 12).int().to(device)
    q = torch.randn(2, hq, d, generator=gen).to(device)
    opts = AttentionOptions(0.3, sinks=_sinks(hq, device, 9))
    rows, seq_lens = torch.tensor([1, 0]).to(device), torch.tensor(lens).to(device)
    got = kernels.decode_attention_paged(q, *cache, table, rows, seq_lens, opts=opts, backend="triton")
    slots = torch.cat([table[1, :5], table[0, :12]]).to(device)
    want = kernels.decode_attention(q, *cache, indptr(lens, device), slots, opts=opts, backend="torch")
    assert_close(got, want, TOL[torch.float32])


def test_sinks_shape_is_checked() -> None:
    q = torch.randn(3, 4, 16)
    with pytest.raises(ValueError, match="sinks must have shape"):
        kernels.extend_attention(
            q, q[:, :2], q[:, :2], torch.tensor([0, 3]), opts=AttentionOptions(0.1, sinks=torch.zeros(2))
        )
