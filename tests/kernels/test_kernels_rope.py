"""Rotary embedding: the cos/sin table against HF's rotary module, the Triton kernel
(rope in place, optionally fused with the KV store) against the torch reference."""

from __future__ import annotations

import pytest
import torch
from _kernel_helpers import DEVICES, TOL, assert_close, rand

import minisgl_kernels as kernels
from minisgl_kernels import reference
from minisgl_kernels.options import HeadNorm, KVStore, RopeOptions


def _inv_freq(rotary_dim: int, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def test_table_and_reference_match_hf_llama_rotary() -> None:
    """float32: our table + in-place rope equal HF's LlamaRotaryEmbedding + apply_rotary_pos_emb."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32, max_position_embeddings=64)
    hf = LlamaRotaryEmbedding(cfg)
    gen = torch.Generator().manual_seed(0)
    t = 9
    q = torch.randn(t, 2, 32, generator=gen)
    k = torch.randn(t, 1, 32, generator=gen)
    pos = torch.tensor([0, 1, 5, 17, 63, 2, 40, 33, 12])
    cos, sin = hf(q, pos[None])
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    table = kernels.rope_table(hf.inv_freq.float(), float(hf.attention_scaling), 64)
    torch.testing.assert_close(table[pos], torch.cat((cos[0, :, :16], sin[0, :, :16]), -1), atol=0, rtol=0)
    kernels.apply_rope(q, k, pos, table, hf.inv_freq.float(), RopeOptions(float(hf.attention_scaling)))
    torch.testing.assert_close(q, want_q[0].transpose(0, 1), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(k, want_k[0].transpose(0, 1), atol=2e-6, rtol=1e-6)


CASES = [  # (tokens, Hq, Hkv, head_dim, rotary_dim, table rows)
    (7, 4, 2, 32, 32, 64),
    (5, 3, 1, 24, 16, 64),  # partial rotary, non-power-of-two heads and head_dim
    (6, 2, 2, 16, 8, 4),  # positions past the table: computed in the kernel
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("store", [False, True])
def test_rope_kernel_matches_reference(device: str, dtype: torch.dtype, case: tuple, store: bool) -> None:
    t, hq, hkv, d, rd, rows = case
    if device == "cuda":
        t *= 37
    gen = torch.Generator().manual_seed(t * d + rd + store)
    inv = _inv_freq(rd).to(device)
    table = kernels.rope_table(inv, 0.75, rows)
    pos = torch.randint(0, 3 * rows if rows < 10 else rows, (t,), generator=gen).to(device)
    q, k, v = (rand(t, h, d, dtype=dtype, device=device, gen=gen) for h in (hq, hkv, hkv))
    num_slots = t + 11
    slots = torch.randperm(num_slots, generator=gen)[:t]
    slots[::3] = -1  # padding tokens: not stored
    slots = slots.to(device)
    caches = [rand(num_slots, hkv, d, dtype=dtype, device=device, gen=gen) for _ in range(2)]
    want_q, want_k = q.clone(), k.clone()
    want_caches = [c.clone() for c in caches]
    extra = KVStore(v, caches[0], caches[1], slots) if store else None
    want_extra = KVStore(v, want_caches[0], want_caches[1], slots) if store else None
    kernels.apply_rope(want_q, want_k, pos, table, inv, RopeOptions(0.75, store=want_extra), backend="torch")
    kernels.apply_rope(q, k, pos, table, inv, RopeOptions(0.75, store=extra), backend="triton")
    tol = TOL[dtype] if dtype != torch.bfloat16 else 8e-3
    assert_close(q, want_q, tol)
    assert_close(k, want_k, tol)
    assert torch.equal(q[..., rd:], want_q[..., rd:]) and torch.equal(k[..., rd:], want_k[..., rd:])
    if store:
        assert_close(caches[0], want_caches[0], tol)
        assert torch.equal(caches[1], want_caches[1])
        kept = slots >= 0
        assert torch.equal(caches[0][slots[kept].long()], k[kept])  # the cache holds the rotated k
    else:
        assert all(torch.equal(c, w) for c, w in zip(caches, want_caches, strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_rope_in_place_on_strided_qkv_views(device: str) -> None:
    """q and k as views into one fused qkv output (row stride > heads * head_dim)."""
    t, hq, hkv, d = 5, 4, 2, 16
    gen = torch.Generator().manual_seed(3)
    qkv = rand(t, (hq + 2 * hkv) * d, dtype=torch.float32, device=device, gen=gen)
    want = qkv.clone()
    inv = _inv_freq(d).to(device)
    table = kernels.rope_table(inv, 1.0, 32)
    pos = torch.arange(3, 3 + t, device=device)

    def views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _ = x.split([hq * d, hkv * d, hkv * d], dim=-1)
        return q.view(t, hq, d), k.view(t, hkv, d)

    kernels.apply_rope(*views(want), pos, table, inv, backend="torch")
    kernels.apply_rope(*views(qkv), pos, table, inv, backend="triton")
    assert_close(qkv, want, TOL[torch.float32])
    assert torch.equal(qkv[:, (hq + hkv) * d :], want[:, (hq + hkv) * d :])  # v untouched


def test_reference_past_table_equals_a_longer_table() -> None:
    inv = _inv_freq(16)
    pos = torch.tensor([0, 3, 9, 30, 200])
    short, long = kernels.rope_table(inv, 1.0, 8), kernels.rope_table(inv, 1.0, 256)
    assert torch.equal(reference.rope_cos_sin(pos, short, inv, 1.0), long[pos])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inv_freq": _inv_freq(40)}, "rotary_dim"),
        ({"positions": torch.arange(4)}, "positions must have shape"),
        ({"cos_sin": torch.zeros(8, 6)}, "cos_sin must have shape"),
        (
            {
                "opts": RopeOptions(
                    store=KVStore(torch.zeros(5, 2, 32), torch.zeros(9, 3, 32), torch.zeros(9, 2, 32), torch.arange(5))
                )
            },
            "k_cache must have shape",
        ),
        ({"positions": torch.arange(5).float()}, "positions must have dtype"),
    ],
)
def test_apply_rope_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    inv = _inv_freq(32)
    args = {
        "q": torch.randn(5, 4, 32),
        "k": torch.randn(5, 2, 32),
        "positions": torch.arange(5),
        "cos_sin": kernels.rope_table(inv, 1.0, 8),
        "inv_freq": inv,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        kernels.apply_rope(
            args.pop("q"), args.pop("k"), args.pop("positions"), args.pop("cos_sin"), args.pop("inv_freq"), **args
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("d", "rd", "offset", "cast"), [(32, 32, 0.0, True), (24, 16, 1.0, False)])
def test_rope_with_fused_qk_norm_matches_norm_then_rope(
    device: str, dtype: torch.dtype, d: int, rd: int, offset: float, cast: bool
) -> None:
    """q/k RMSNorm fused into the rope launch equals rmsnorm (reference) followed by rope."""
    t, hq, hkv = (6, 4, 2) if device == "cpu" else (97, 16, 8)
    gen = torch.Generator().manual_seed(d + rd)
    inv = _inv_freq(rd).to(device)
    table = kernels.rope_table(inv, 1.0, 64)
    pos = torch.randint(0, 64, (t,), generator=gen).to(device)
    q, k, v = (rand(t, h, d, dtype=dtype, device=device, gen=gen) * 3 for h in (hq, hkv, hkv))
    qw, kw = (rand(d, dtype=dtype, device=device, gen=gen) for _ in range(2))
    slots = torch.randperm(t + 5, generator=gen)[:t]
    slots[1] = -1
    slots = slots.to(device)
    caches = [torch.zeros(t + 5, hkv, d, dtype=dtype, device=device) for _ in range(2)]
    norm = {"offset": offset, "cast_before_weight": cast}
    want_q, want_k = reference.rmsnorm(q, qw, 1e-5, **norm), reference.rmsnorm(k, kw, 1e-5, **norm)
    kernels.apply_rope(want_q, want_k, pos, table, inv, backend="torch")
    kernels.apply_rope(
        q,
        k,
        pos,
        table,
        inv,
        RopeOptions(store=KVStore(v, caches[0], caches[1], slots), norm=HeadNorm(qw, kw, 1e-5, offset, cast)),
        backend="triton",
    )
    tol = 8e-3 if dtype == torch.bfloat16 and device == "cuda" else TOL[dtype]  # interpreter: bf16 truncates
    assert_close(q, want_q, tol)
    assert_close(k, want_k, tol)
    kept = slots >= 0
    assert torch.equal(caches[0][slots[kept].long()], k[kept]) and torch.equal(caches[1][slots[kept].long()], v[kept])
