"""Multi-head latent attention and DeepSeek-V3-style routing (`specs/deepseek_v3.yaml`).

Truth is transformers: tiny random `DeepseekV3ForCausalLM` models (q LoRA and a plain
q_proj, interleaved and half-split rope, yarn with mscale and default rope), its router
module for the routing, and plain `scaled_dot_product_attention` over expanded keys for
the latent-attention reference. The KV cache must hold the compressed layout:
`kv_lora_rank + qk_rope_head_dim` numbers per token per layer, on every rank.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _helpers import SPECS
from torch.nn import functional as F

from minisgl_decl.catalogue import get_layer
from minisgl_decl.catalogue.params import TPInfo
from minisgl_decl.parity.check import verdict
from minisgl_decl.parity.run import parity_on_random_model
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.runtime.model import CompiledModel
from minisgl_decl.spec.load import load_spec
from minisgl_kernels import mla_reference

SPEC = SPECS / "deepseek_v3.yaml"

CASES: list[tuple[str, dict[str, Any]]] = [
    ("q-lora-yarn-interleaved", {}),  # the spec's example_config
    ("q-proj", {"q_lora_rank": None}),  # no q LoRA: one q_proj
    (
        "half-split-rope-default-theta-bias",
        {
            "rope_interleave": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
            "attention_bias": True,
            "first_k_dense_replace": 0,  # every layer routed
            "n_group": 1,
            "topk_group": 1,
            "norm_topk_prob": False,
        },
    ),
]


@pytest.mark.parametrize("overrides", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_parity_with_transformers(overrides: dict[str, Any]) -> None:
    results = parity_on_random_model(load_spec(SPEC), overrides)
    ok, worst = verdict(results)
    assert ok and len(results) == 4, "\n".join(f"{r.name}: {r.max_abs_diff:.3e}" for r in results)
    assert worst < 1e-4


@pytest.mark.parametrize("tp", [1, 2])
def test_kv_cache_holds_the_compressed_latent_and_rope_key(tp: int) -> None:
    spec = load_spec(SPEC)
    cfg = spec.spec.example_config
    graph = compile_spec(spec, None, tp=tp).graph
    for rank in range(tp):
        model = CompiledModel(graph, rank=rank)
        kv = model.allocate_kv_cache(10, torch.float32, "cpu")
        width = cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]  # 32 + 8
        assert len(kv.k) == len(kv.v) == cfg["num_hidden_layers"]
        assert all(k.shape == (10, width) for k in kv.k)
        assert all(v.numel() == 0 for v in kv.v)
        assert model.kv_elements_per_token() == cfg["num_hidden_layers"] * width  # not 2 * heads * head_dim
    full = 2 * cfg["num_attention_heads"] * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"])
    assert width < full / 4


def test_only_latent_attention_opts_out_of_cuda_graphs() -> None:
    deepseek = CompiledModel(compile_spec(load_spec(SPEC), None).graph)
    llama = CompiledModel(compile_spec(load_spec(SPECS / "llama.yaml"), None).graph)
    assert (deepseek.not_graph_capturable, llama.not_graph_capturable) == (["latent_attention"], [])


def test_attention_cache_layout_is_per_kv_head() -> None:
    args = get_layer("attention").Args(hidden=16, heads=8, kv_heads=2, head_dim=4)
    layout = get_layer("attention").cache_layout(args, 4)  # 2 kv heads on 4 ranks: one each
    assert (layout.k, layout.v, layout.elements()) == ((1, 4), (1, 4), 8)


def _expanded_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
    w: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """transformers' way: expand every cached latent to per-head k_nope and v, then softmax attention."""
    h, nope = q_nope.shape[1], q_nope.shape[2]
    kv = (latent @ w.T).view(latent.shape[0], h, -1)
    k = torch.cat([kv[..., :nope], k_rope.unsqueeze(1).expand(-1, h, -1)], dim=-1)
    v = kv[..., nope:]
    q = torch.cat([q_nope, q_rope], dim=-1)
    n, s = q.shape[0], k.shape[0]
    mask = torch.arange(s).unsqueeze(0) <= torch.arange(n).unsqueeze(1) + (s - n)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), mask, scale=scale)
    return out.transpose(0, 1)


def test_latent_reference_equals_expanded_attention() -> None:
    """Extend (prefix + new tokens), slot-list decode and table decode, each against expanded K/V."""
    torch.manual_seed(0)
    h, nope, rope, v_dim, rank, scale = 3, 8, 4, 6, 10, 0.3
    w = torch.randn(h * (nope + v_dim), rank)
    w_k, w_v = w.view(h, nope + v_dim, rank)[:, :nope], w.view(h, nope + v_dim, rank)[:, nope:]
    lens, prefix = [5, 1, 9], [3, 0, 4]
    cache = torch.zeros(64, rank + rope)
    slots = torch.randperm(60)
    at, ctx_slots = 0, []
    for n in lens:
        ctx_slots.append(slots[at : at + n])
        at += n
    contexts = [(torch.randn(n, rank), torch.randn(n, rope)) for n in lens]
    for s, (lat, kr) in zip(ctx_slots, contexts, strict=True):
        mla_reference.store_latent(torch.cat([lat, kr], -1), cache, s)
    queries = [(torch.randn(n - p, h, nope), torch.randn(n - p, h, rope)) for n, p in zip(lens, prefix, strict=True)]

    def latent_q(qn: torch.Tensor, qr: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.einsum("thn,hnr->thr", qn, w_k), qr], -1)

    q = torch.cat([latent_q(*x) for x in queries])
    cu = torch.tensor([0, *torch.cumsum(torch.tensor([n - p for n, p in zip(lens, prefix, strict=True)]), 0).tolist()])
    pi = torch.tensor([0, *torch.cumsum(torch.tensor(prefix), 0).tolist()])
    pre = torch.cat([s[:p] for s, p in zip(ctx_slots, prefix, strict=True)])
    new = torch.cat([s[p:] for s, p in zip(ctx_slots, prefix, strict=True)])
    o = mla_reference.latent_extend_attention(q, cache, cu, pi, pre, new, value_dim=rank, scale=scale)
    got = torch.einsum("thr,hvr->thv", o, w_v)
    want = torch.cat(
        [_expanded_attention(*x, lat, kr, w, scale) for x, (lat, kr) in zip(queries, contexts, strict=True)]
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # decode: the last token of each request over its whole context, both slot layouts
    last = torch.stack([latent_q(qn[-1:], qr[-1:])[0] for qn, qr in queries])
    indptr = torch.tensor([0, *torch.cumsum(torch.tensor(lens), 0).tolist()])
    table = torch.full((4, 16), -1, dtype=torch.int32)
    for b, s in enumerate(ctx_slots):
        table[b + 1, : len(s)] = s.int()
    want_d = torch.stack(
        [
            _expanded_attention(qn[-1:], qr[-1:], lat, kr, w, scale)[0]
            for (qn, qr), (lat, kr) in zip(queries, contexts, strict=True)
        ]
    )
    by_slots = mla_reference.latent_decode_attention(
        last, cache, indptr, torch.cat(ctx_slots), value_dim=rank, scale=scale
    )
    by_table = mla_reference.latent_decode_attention_paged(
        last, cache, table, torch.tensor([1, 2, 3]), torch.tensor(lens), value_dim=rank, scale=scale
    )
    for o_d in (by_slots, by_table):
        torch.testing.assert_close(torch.einsum("thr,hvr->thv", o_d, w_v), want_d, rtol=1e-5, atol=1e-5)


def test_negative_slots_store_nothing() -> None:
    cache = torch.zeros(4, 3)
    mla_reference.store_latent(torch.ones(2, 3), cache, torch.tensor([-1, 2]))
    assert cache.sum() == 3 and cache[2].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("groups", "kept", "norm"), [(4, 2, True), (4, 1, False), (1, 1, True)])
def test_routing_equals_the_transformers_router(groups: int, kept: int, norm: bool) -> None:
    """Sigmoid scores, correction bias for the choice only, grouped top-k, renormalisation, scale."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    e, d, k, scale = 16, 24, 3, 2.5
    cfg = DeepseekV3Config(
        hidden_size=d,
        n_routed_experts=e,
        num_experts_per_tok=k,
        n_group=groups,
        topk_group=kept,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
    )
    torch.manual_seed(1)
    hf = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        hf.weight.normal_(0, 0.3)
        hf.e_score_correction_bias.normal_(0, 0.2)
    layer = get_layer("moe")
    args = layer.Args(
        dim=d,
        ffn=8,
        experts=e,
        top_k=k,
        norm_topk_prob=norm,
        scoring="sigmoid",
        score_bias=True,
        groups=groups,
        topk_groups=kept,
        routed_scale=scale,
    )
    module = layer.build(args, TPInfo())
    module.router.weight = torch.nn.Parameter(hf.weight.detach().clone(), requires_grad=False)
    module.router.score_bias = torch.nn.Parameter(hf.e_score_correction_bias.clone(), requires_grad=False)
    x = torch.randn(40, d)
    _, want_w, want_ids = hf(x)
    got_w, got_ids = module.route(x)
    order_w, order_g = want_ids.sort(dim=-1), got_ids.sort(dim=-1)
    assert torch.equal(order_w.values, order_g.values)  # the same experts per token
    torch.testing.assert_close(got_w.gather(1, order_g.indices), want_w.gather(1, order_w.indices))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"groups": 3}, "must divide experts"),
        ({"groups": 4, "topk_groups": 5}, "cannot exceed groups"),
        ({"groups": 8}, "2 or more experts each"),
        ({"groups": 4, "topk_groups": 1, "top_k": 3}, "exceeds the experts of the kept groups"),
    ],
)
def test_routing_arguments_are_checked(args: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        get_layer("moe").Args(**{"dim": 8, "ffn": 8, "experts": 8, "top_k": 2, **args})


def test_odd_rope_dim_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="rope_dim must be even"):
        get_layer("latent_attention").Args(hidden=8, heads=2, kv_rank=4, nope_dim=2, rope_dim=3, v_dim=2)
