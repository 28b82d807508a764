"""Routed experts (fused MoE) and fused activation-and-multiply: the Triton kernels against
the torch references, and the MoE reference against a dense float64 computation."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, poisoned, rand
from torch.nn import functional as F

import minisgl_kernels as kernels
from minisgl_kernels import reference
from minisgl_kernels.moe_align import moe_align


def _routing(t: int, e: int, top_k: int, gen: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(t, e, generator=gen)
    weights, ids = torch.topk(logits.softmax(-1), top_k, dim=-1)
    return weights.to(device), ids.to(device)


def _experts(e: int, dim: int, ffn: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> tuple:
    gate_up = rand(e, 2 * ffn, dim, dtype=dtype, device=device, gen=gen) * dim**-0.5
    down = rand(e, dim, ffn, dtype=dtype, device=device, gen=gen) * ffn**-0.5
    return gate_up, down


def test_moe_reference_matches_dense_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    t, e, k, dim, ffn = 9, 5, 2, 12, 10
    x = torch.randn(t, dim, generator=gen, dtype=torch.float64)
    gate_up, down = (w.double() for w in _experts(e, dim, ffn, torch.float32, "cpu", gen))
    weights, ids = _routing(t, e, k, gen, "cpu")
    dense = torch.zeros(t, e, dtype=torch.float64)  # routing weight of every (token, expert)
    dense.scatter_(1, ids, weights.double())
    every = torch.stack(
        [F.linear(F.silu(x @ gate_up[i, :ffn].T) * (x @ gate_up[i, ffn:].T), down[i]) for i in range(e)], dim=1
    )  # [t, e, dim]
    want = (dense[..., None] * every).sum(1)
    torch.testing.assert_close(reference.fused_moe(x, gate_up, down, weights.double(), ids, "silu"), want)


@pytest.mark.parametrize("device", [pytest.param("cpu"), *DEVICES[1:]])
@pytest.mark.parametrize(("t", "e", "top_k", "block_m"), [(1, 8, 2, 16), (13, 6, 3, 16), (40, 128, 8, 32)])
def test_moe_align_blocks_hold_one_expert_each(device: str, t: int, e: int, top_k: int, block_m: int) -> None:
    gen = torch.Generator().manual_seed(t)
    _, ids = _routing(t, e, top_k, gen, device)
    pairs, block_expert = moe_align(ids, e, block_m)
    n = t * top_k
    flat, pairs, block_expert = ids.reshape(-1).cpu(), pairs.cpu().long(), block_expert.cpu().long()
    real = pairs[pairs < n]
    assert sorted(real.tolist()) == list(range(n))  # every pair exactly once
    assert torch.all(pairs[pairs >= n] == n)  # padding is the sentinel
    for b, expert in enumerate(block_expert.tolist()):
        block = pairs[b * block_m : (b + 1) * block_m]
        mine = block[block < n]
        if expert >= e:
            assert mine.numel() == 0
            continue
        assert torch.all(flat[mine] == expert) and torch.all(mine[1:] > mine[:-1])


MOE_CASES = [  # (tokens, experts, top_k, dim, ffn)
    (1, 8, 2, 32, 48),  # decode-like: one token
    (11, 6, 2, 40, 24),  # dims that are not multiples of the blocks
    (24, 16, 4, 64, 32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", MOE_CASES)
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_fused_moe_matches_reference(device: str, dtype: torch.dtype, case: tuple, act: str) -> None:
    t, e, k, dim, ffn = case
    if device == "cuda":
        t, dim, ffn = t * 9, dim * 8, ffn * 8
    gen = torch.Generator().manual_seed(t + e + dim)
    x = rand(t, dim, dtype=dtype, device=device, gen=gen)
    gate_up, down = _experts(e, dim, ffn, dtype, device, gen)
    weights, ids = _routing(t, e, k, gen, device)
    got = kernels.fused_moe(x, gate_up, down, weights, ids, act, backend="triton")
    want = kernels.fused_moe(x, gate_up, down, weights, ids, act, backend="torch")
    assert_close(got, want, TOL[dtype])  # bf16 under the interpreter rounds toward zero: 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("t", "e", "k"), [(1, 128, 8), (16, 128, 8), (300, 128, 8), (64, 8, 2)])
def test_fused_moe_autotuned_gpu_shapes(t: int, e: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every autotune config at real-ish shapes (block sizes 16/32/64 rows) is correct."""
    from minisgl_kernels import moe_launch

    gen = torch.Generator().manual_seed(t)
    x = rand(t, 512, dtype=torch.bfloat16, device="cuda", gen=gen)
    gate_up, down = _experts(e, 512, 192, torch.bfloat16, "cuda", gen)
    weights, ids = _routing(t, e, k, gen, "cuda")
    want = reference.fused_moe(x, gate_up, down, weights, ids, "silu")
    for cfg in moe_launch._CONFIGS:
        for bm in (16, 32, 64):
            out = poisoned(x.shape, x.dtype, "cuda")
            fixed = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            moe_launch.fused_moe_triton(
                x, gate_up, down, weights.to(x.dtype), ids, "silu", out, block_m=bm, config=fixed
            )
            assert_close(out, want, 1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("shape", [(3, 2 * 40), (2, 3, 2 * 1100)])
def test_act_and_mul_matches_reference(device: str, dtype: torch.dtype, act: str, shape: tuple) -> None:
    gen = torch.Generator().manual_seed(len(shape) + shape[-1])
    x = rand(*shape, dtype=dtype, device=device, gen=gen) * 3
    out = poisoned((*shape[:-1], shape[-1] // 2), dtype, device)
    got = kernels.act_and_mul(x, act, out=out, backend="triton")
    assert got is out
    want = reference.act_and_mul(x, act)
    assert_close(got, want, TOL[dtype] if dtype == torch.float32 else 8e-3)


def test_act_and_mul_reference_is_the_mlp_expression() -> None:
    x = torch.randn(4, 2 * 8, dtype=torch.float64)
    torch.testing.assert_close(reference.act_and_mul(x, "silu"), F.silu(x[:, :8]) * x[:, 8:])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ids": torch.zeros(3, 2, dtype=torch.int64)}, "topk_ids must have shape"),
        ({"down": torch.zeros(4, 16, 7)}, "down must have shape"),
        ({"act": "tanh"}, "act must be one of"),
        ({"ids": torch.full((5, 2), 9)}, "topk_ids must be in"),
        ({"weights": torch.zeros(5, 3)}, "topk_weights must have shape"),
    ],
)
def test_fused_moe_rejects_bad_arguments(change: dict, message: str) -> None:
    args = {
        "x": torch.randn(5, 16),
        "gate_up": torch.randn(4, 12, 16),
        "down": torch.randn(4, 16, 6),
        "weights": torch.rand(5, 2),
        "ids": torch.randint(0, 4, (5, 2)),
        "act": "silu",
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        kernels.fused_moe(args["x"], args["gate_up"], args["down"], args["weights"], args["ids"], args["act"])


def test_moe_options_bias_clamp_offset_slope_match_the_formula() -> None:
    """MoEOptions (GPT-OSS's expert MLP): bias on gate|up, gate clamped above, up clamped both
    ways and offset, silu with a sigmoid slope; against a per-token float64 loop written here."""
    gen = torch.Generator().manual_seed(11)
    t, dim, ffn, e, k = 7, 16, 12, 4, 2
    x = torch.randn(t, dim, generator=gen)
    gate_up = torch.randn(e, 2 * ffn, dim, generator=gen) * 0.5
    down = torch.randn(e, dim, ffn, generator=gen) * 0.5
    bias = torch.randn(e, 2 * ffn, generator=gen)
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)])
    w = torch.rand(t, k, generator=gen)
    opts = kernels.MoEOptions(bias, alpha=1.702, limit=0.8, up_offset=1.0)
    got = kernels.fused_moe(x, gate_up, down, w, ids, "silu", opts)
    want = torch.zeros(t, dim, dtype=torch.float64)
    for i in range(t):
        for j in range(k):
            ex = int(ids[i, j])
            h = gate_up[ex].double() @ x[i].double() + bias[ex].double()
            g, u = h[:ffn].clamp(max=0.8), h[ffn:].clamp(-0.8, 0.8)
            want[i] += w[i, j].double() * (down[ex].double() @ ((u + 1.0) * g * torch.sigmoid(1.702 * g)))
    assert_close(got.double(), want, 1e-6)
    plain = kernels.fused_moe(x, gate_up, down, w, ids, "silu")
    assert (plain - got).abs().max() > 1e-2  # the options change the result
    with pytest.raises(ValueError, match="silu only"):
        kernels.fused_moe(x, gate_up, down, w, ids, "gelu", kernels.MoEOptions(alpha=2.0))
    with pytest.raises(ValueError, match="gate_up_bias must have shape"):
        kernels.fused_moe(x, gate_up, down, w, ids, "silu", kernels.MoEOptions(bias[:, :ffn]))
    with pytest.raises(ValueError, match="limit must be"):
        kernels.MoEOptions(limit=0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "opts",
    [
        {"bias": True, "alpha": 1.702, "limit": 0.7, "up_offset": 1.0},  # GPT-OSS's expert MLP
        {"bias": True},
        {"limit": 0.5},
        {"alpha": 2.0, "up_offset": -0.5},
    ],
    ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()),
)
def test_fused_moe_kernel_with_options_matches_reference(device: str, dtype: torch.dtype, opts: dict) -> None:
    """The MoEOptions epilogue of the gate|up kernel (Triton) against the torch loop."""
    t, dim, ffn, e, k = 9, 32, 24, 4, 2
    gen = torch.Generator().manual_seed(len(opts) + int(dtype == torch.bfloat16))
    x = rand(t, dim, dtype=dtype, device=device, gen=gen)
    gate_up, down = _experts(e, dim, ffn, dtype, device, gen)
    weights, ids = _routing(t, e, k, gen, device)
    bias = rand(e, 2 * ffn, dtype=dtype, device=device, gen=gen) if opts.get("bias") else None
    mo = kernels.MoEOptions(
        bias, alpha=opts.get("alpha", 1.0), limit=opts.get("limit"), up_offset=opts.get("up_offset", 0.0)
    )
    got = kernels.fused_moe(x, gate_up, down, weights, ids, "silu", mo, backend="triton")
    want = kernels.fused_moe(x, gate_up, down, weights, ids, "silu", mo, backend="torch")
    plain = kernels.fused_moe(x, gate_up, down, weights, ids, "silu", backend="torch")
    assert_close(got, want, TOL[dtype])
    assert (want.float() - plain.float()).abs().max() > 1e-2  # the options matter at these values
