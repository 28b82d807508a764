"""CUDA-only checks: int64 offsets past 2**31 elements, and decode under CUDA-graph replay."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import TOL, assert_close, indptr

import minisgl_kernels as kernels
from minisgl_kernels.options import AttentionOptions

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_int64_offsets_past_2_pow_31_elements() -> None:
    hkv, d, dtype = 2, 128, torch.bfloat16
    num_slots = (1 << 31) // (hkv * d) + 4096  # the last slots start beyond element 2**31
    k_cache = torch.empty(num_slots, hkv, d, dtype=dtype, device="cuda")
    v_cache = torch.empty_like(k_cache)
    try:
        gen = torch.Generator().manual_seed(0)
        n = 300
        slots = torch.cat([torch.arange(num_slots - n + 5, num_slots), torch.arange(5)]).cuda()
        k, v = (torch.randn(n, hkv, d, generator=gen).to("cuda", dtype) for _ in range(2))
        kernels.store_kv(k, v, k_cache, v_cache, slots)
        assert torch.equal(k_cache[slots], k) and torch.equal(v_cache[slots], v)
        q = torch.randn(2, 8, d, generator=gen).to("cuda", dtype)
        ip = indptr([180, 120], "cuda")
        got = kernels.decode_attention(q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.09))
        want = kernels.decode_attention(q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.09), backend="torch")
        assert_close(got, want, TOL[dtype])
        qe = torch.randn(40, 8, d, generator=gen).to("cuda", dtype)
        ke, ve = (torch.randn(40, hkv, d, generator=gen).to("cuda", dtype) for _ in range(2))
        args = (qe, ke, ve, indptr([30, 10], "cuda"), k_cache, v_cache, ip, slots)
        got = kernels.extend_attention(*args, opts=AttentionOptions(0.09))
        want = kernels.extend_attention(*args, opts=AttentionOptions(0.09), backend="torch")
        assert_close(got, want, TOL[dtype])
    finally:
        del k_cache, v_cache
        torch.cuda.empty_cache()


def test_decode_cuda_graph_replay_follows_device_data() -> None:
    batch, hq, hkv, d, dtype = 4, 8, 2, 128, torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    k_cache, v_cache = (torch.randn(8192, hkv, d, generator=gen).to("cuda", dtype) for _ in range(2))
    q = torch.randn(batch, hq, d, generator=gen).to("cuda", dtype)
    ip = torch.zeros(batch + 1, dtype=torch.int32, device="cuda")
    slots = torch.zeros(4096, dtype=torch.int32, device="cuda")

    def fill(lens: list[int]) -> None:
        ip.copy_(indptr(lens, "cuda"))
        slots[: sum(lens)].copy_(torch.randperm(8192, generator=gen)[: sum(lens)].to("cuda", torch.int32))
        q.copy_(torch.randn(batch, hq, d, generator=gen).to("cuda", dtype))

    fill([100, 1, 700, 33])
    kernels.decode_attention(q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.1, None, 30.0))  # autotune first
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.decode_attention(q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.1, None, 30.0))
    for lens in ([1500, 2, 9, 400], [0, 3000, 1, 64]):
        fill(lens)
        out.fill_(float("nan"))
        graph.replay()
        want = kernels.decode_attention(
            q, k_cache, v_cache, ip, slots, opts=AttentionOptions(0.1, None, 30.0), backend="torch"
        )
        assert_close(out, want, TOL[dtype])
