"""One-launch (fused) decode against the reference and the two-launch path: counter reset
across repeated launches, and CUDA-graph capture and replay."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DECODE_CASES, DEVICES, TOL, assert_close, decode_inputs, indptr, poisoned

from minisgl_kernels import attention_launch, reference
from minisgl_kernels.options import AttentionOptions


def _decode(inp: dict, out: torch.Tensor, fused: bool, num_splits: int | None, **kw: object) -> None:
    attention_launch.decode_attention_triton(**inp, out=out, fused=fused, num_splits=num_splits, **kw)


def _counters_zero(device: str) -> bool:
    key = (torch.device(device).type, torch.device(device).index)
    if device == "cuda":
        key = ("cuda", torch.cuda.current_device())
    return int(attention_launch._COUNTERS[key].abs().sum()) == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-d{c[3]}-w{c[4]}-c{c[5]}")
@pytest.mark.parametrize("num_splits", [None, 1, 3, 7])
def test_fused_decode_matches_reference_and_two_launch(device: str, case: tuple, num_splits: int | None) -> None:
    window, softcap, dtype = case[4], case[5], case[6]
    kw = {"opts": AttentionOptions(0.2, window, softcap)}
    for seed in range(3):  # repeated launches: each must find its counters reset
        inp = decode_inputs(case, device, seed=seed * 31 + case[1], index_dtype=torch.int32)
        fused, split = poisoned(tuple(inp["q"].shape), dtype, device), poisoned(tuple(inp["q"].shape), dtype, device)
        _decode(inp, fused, True, num_splits, **kw)
        _decode(inp, split, False, num_splits, **kw)
        want = reference.decode_attention(*inp.values(), **kw)
        assert_close(fused, want, TOL[dtype])
        assert_close(fused, split, 1e-5 if dtype == torch.float32 else 4e-3)  # combine rounding only
        assert _counters_zero(device)


def test_fused_decode_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    enabled, most = attention_launch.fused_decode_enabled, attention_launch.FUSED_MAX_SPLITS
    monkeypatch.delenv(attention_launch.FUSED_DECODE_ENV, raising=False)
    assert enabled(1) and enabled(most) and not enabled(most + 1)
    assert enabled(most + 1, True) and not enabled(1, False)
    monkeypatch.setenv(attention_launch.FUSED_DECODE_ENV, "0")
    assert not enabled(1) and enabled(1, True)
    monkeypatch.setenv(attention_launch.FUSED_DECODE_ENV, "1")
    assert enabled(2) and not enabled(most + 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fresh_counters", [False, True])
def test_fused_decode_cuda_graph_replays(fresh_counters: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replays of a captured fused decode follow the device data and leave the counters at
    0; with no counter buffer before capture, the capture allocates (and zeroes) its own."""
    batch, hq, hkv, d, dtype = 6, 16, 2, 128, torch.bfloat16
    gen = torch.Generator().manual_seed(2)
    k_cache, v_cache = (torch.randn(16384, hkv, d, generator=gen).to("cuda", dtype) for _ in range(2))
    q = torch.randn(batch, hq, d, generator=gen).to("cuda", dtype)
    ip = torch.zeros(batch + 1, dtype=torch.int32, device="cuda")
    slots = torch.zeros(12000, dtype=torch.int32, device="cuda")
    out = torch.empty_like(q)
    inp = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "kv_indptr": ip, "kv_slots": slots}

    def fill(lens: list[int]) -> None:
        ip.copy_(indptr(lens, "cuda"))
        slots[: sum(lens)].copy_(torch.randperm(16384, generator=gen)[: sum(lens)].to("cuda", torch.int32))
        q.copy_(torch.randn(batch, hq, d, generator=gen).to("cuda", dtype))

    fill([100, 1, 700, 33, 0, 5])
    _decode(inp, out, True, 4, opts=AttentionOptions(0.1, None, None))  # compile outside the capture
    torch.cuda.synchronize()
    if fresh_counters:
        monkeypatch.setattr(attention_launch, "_COUNTERS", {})
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _decode(inp, out, True, 4, opts=AttentionOptions(0.1, None, None))
    for lens in ([1500, 2, 9, 400, 3000, 64], [0, 3000, 1, 64, 7, 2000], [5] * 6):
        fill(lens)
        for _ in range(2):
            out.fill_(float("nan"))
            graph.replay()
            want = reference.decode_attention(q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.1))
            assert_close(out, want, TOL[dtype])
    if not fresh_counters:
        torch.cuda.synchronize()
        assert _counters_zero("cuda")
