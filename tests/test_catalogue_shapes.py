"""Declarations build the modules: every catalogue layer, built at tp 1..4, holds exactly
its declared parameters at their declared names with the declared local shapes.

A few hand-written local shapes check the declarations themselves (independently of
`ParamDecl.local_shape`).
"""

from __future__ import annotations

from typing import Any

import pytest

from minisgl_decl.catalogue import catalogue_names, get_layer
from minisgl_decl.catalogue.params import TPInfo
from minisgl_decl.errors import UserError

# layer -> argument sets; every unit count (heads, ffn, vocab, ...) divides by 1..4 unless
# the layer replicates it (kv heads) or pads it (vocab)
CASES: dict[str, list[dict[str, Any]]] = {
    "embedding": [{"vocab": 10, "dim": 8}, {"vocab": 12, "dim": 8, "scale": 2.0}],
    "lm_head": [{"vocab": 10, "dim": 8}, {"vocab": 13, "dim": 8, "bias": True}],
    "rmsnorm": [{"dim": 8}],
    "layernorm": [{"dim": 8}, {"dim": 8, "bias": False}],
    "attention": [
        {"hidden": 16, "heads": 12, "kv_heads": 12, "head_dim": 4},
        {"hidden": 16, "heads": 12, "kv_heads": 1, "head_dim": 4, "qkv_bias": True, "o_bias": True},
        {"hidden": 16, "heads": 12, "kv_heads": 2, "head_dim": 4, "qk_norm": True},
        {
            "hidden": 16,
            "heads": 12,
            "kv_heads": 12,
            "head_dim": 4,
            "qk_norm": True,
            "qk_norm_type": "layernorm",
            "qk_norm_scope": "per_head",
            "qk_norm_bias": True,
        },
        {"hidden": 16, "heads": 12, "kv_heads": 1, "head_dim": 4, "qk_norm": True, "qk_norm_scope": "full"},
    ],
    "gated_mlp": [{"dim": 8, "ffn": 12}, {"dim": 8, "ffn": 24, "bias": True}],
    "mlp": [{"dim": 8, "ffn": 12}, {"dim": 8, "ffn": 12, "bias": False}],
    "linear": [
        {"in_dim": 12, "out_dim": 24, "parallel": p, "bias": b}
        for p in ("column", "row", "replicated")
        for b in (False, True)
    ],
    "softcap": [{"cap": 30.0}, {}],
    "moe": [
        {"dim": 8, "ffn": 12, "experts": 3, "top_k": 2},
        {"dim": 8, "ffn": 12, "experts": 8, "top_k": 3, "scoring": "sigmoid", "score_bias": True, "groups": 4},
    ],
    "latent_attention": [
        {"hidden": 16, "heads": 12, "q_rank": 6, "kv_rank": 10, "nope_dim": 4, "rope_dim": 2, "v_dim": 3},
        {"hidden": 16, "heads": 12, "kv_rank": 10, "nope_dim": 4, "rope_dim": 2, "v_dim": 3, "bias": True},
    ],
    "activation": [{"fn": "sigmoid"}],
    "position_embedding": [{"max_positions": 16, "dim": 8}],
}

# (layer, case index) -> the tps the case cannot run at (the test checks that they are refused)
ILLEGAL_TP: dict[tuple[str, int], set[int]] = {("attention", 2): {3}}  # 2 kv heads on 3 ranks

# independent local shapes: (layer, case index, tp) -> {name: shape}
EXPECTED: dict[tuple[str, int, int], dict[str, tuple[int, ...]]] = {
    ("attention", 0, 4): {"qkv.weight": ((3 + 3 + 3) * 4, 16), "o.weight": (16, 12)},
    ("attention", 1, 4): {
        "qkv.weight": ((3 + 1 + 1) * 4, 16),
        "qkv.bias": (20,),
        "o.weight": (16, 12),
        "o.bias": (16,),
    },
    ("attention", 2, 3): {"qkv.weight": ((4 + 1 + 1) * 4, 16), "o.weight": (16, 16), "q_norm": (4,), "k_norm": (4,)},
    ("gated_mlp", 1, 3): {"gate_up.weight": (16, 8), "gate_up.bias": (16,), "down.weight": (8, 8), "down.bias": (8,)},
    ("lm_head", 1, 4): {"weight": (4, 8), "bias": (4,)},
    ("embedding", 0, 3): {"weight": (4, 8)},
    ("moe", 0, 2): {"router.weight": (3, 8), "gate_up": (3, 12, 8), "down": (3, 8, 6)},
    ("linear", 3, 4): {"weight": (24, 3), "bias": (24,)},
    ("linear", 1, 2): {"weight": (12, 12), "bias": (12,)},
    # per-head q/k norm weights: every head's row on every rank; full-width: sharded like the q / k rows
    ("attention", 3, 4): {"q_norm": (12, 4), "k_norm": (12, 4), "q_norm_bias": (12, 4), "k_norm_bias": (12, 4)},
    ("attention", 4, 4): {"qkv.weight": ((3 + 1 + 1) * 4, 16), "q_norm": (12,), "k_norm": (4,)},
    ("position_embedding", 0, 2): {"weight": (16, 8)},
    ("moe", 1, 2): {"router.weight": (8, 8), "router.score_bias": (8,), "gate_up": (8, 12, 8), "down": (8, 8, 6)},
    # latent attention: heads split (3 of 12 on each of 4 ranks), the low-rank projections replicated
    ("latent_attention", 0, 4): {
        "q_a.weight": (6, 16),
        "q_a_norm": (6,),
        "q_b.weight": (3 * (4 + 2), 6),
        "kv_a.weight": (10 + 2, 16),
        "kv_a_norm": (10,),
        "kv_b.weight": (3 * (4 + 3), 10),
        "o.weight": (16, 3 * 3),
    },
    ("latent_attention", 1, 3): {
        "q.weight": (4 * (4 + 2), 16),
        "kv_a.bias": (12,),
        "kv_b.weight": (4 * (4 + 3), 10),
        "o.bias": (16,),
    },
}


def test_every_catalogue_layer_has_cases() -> None:
    assert set(CASES) == set(catalogue_names())


@pytest.mark.parametrize("tp", [1, 2, 3, 4])
@pytest.mark.parametrize("layer", sorted(CASES))
def test_built_parameters_are_the_declared_ones(layer: str, tp: int) -> None:
    kind = get_layer(layer)
    for i, raw in enumerate(CASES[layer]):
        args = kind.Args(**raw)
        decls = kind.params(args)
        if tp in ILLEGAL_TP.get((layer, i), set()):
            with pytest.raises(UserError, match=f"tp={tp}"):
                for d in decls:
                    d.check_tp(tp, layer)
            continue
        for d in decls:
            d.check_tp(tp, layer)
        for rank in range(tp):
            module = kind.build(args, TPInfo(tp, rank))
            built = {n: tuple(p.shape) for n, p in module.named_parameters()}
            declared = {d.name: d.local_shape(tp) for d in decls if d.present}
            assert built == declared, (layer, raw, tp)
            assert all(p.is_meta for p in module.parameters())
            for d in decls:
                if not d.present:  # switched off: registered as None at its name
                    *path, attr = d.name.split(".")
                    owner = module
                    for part in path:
                        owner = getattr(owner, part)
                    assert attr in owner._parameters and owner._parameters[attr] is None
            for name, shape in EXPECTED.get((layer, i, tp), {}).items():
                assert built[name] == shape, (layer, raw, tp, name)


def test_declared_names_do_not_depend_on_arguments() -> None:
    for layer, cases in CASES.items():
        kind = get_layer(layer)
        names = {tuple(d.name for d in kind.params(kind.Args(**raw))) for raw in cases}
        assert len(names) == 1, (layer, names)
