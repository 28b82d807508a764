"""Parity with transformers (the numerical truth) for every spec, at TP=1, float32.

Each case builds a tiny random model with the transformers class of the architecture,
saves it as safetensors, loads it through our loader plan and compares logits for
prefill, a varlen batch, prefix+extend and paged decode.
"""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import SPECS

from minisgl_decl.parity.check import verdict
from minisgl_decl.parity.run import parity_on_random_model
from minisgl_decl.spec.load import load_spec

CASES: list[tuple[str, dict[str, Any]]] = [
    ("llama", {}),  # llama3 rope scaling, head_dim 32 != 96/6, GQA 6:2, untied
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.5, "rope_theta": 5000.0}}),
    (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "rope_theta": 10000.0,
                "original_max_position_embeddings": 64,
            }
        },
    ),
    ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": None, "hidden_act": "gelu_pytorch_tanh"}),
    ("qwen2", {}),  # qkv bias, kv_heads=1, tied, sliding window on layers >= 1
    ("qwen2", {"tie_word_embeddings": False, "num_key_value_heads": 5, "use_sliding_window": False}),
    ("qwen3", {}),  # q/k norm, head_dim 32 != 64/4, attention bias
    ("qwen3", {"tie_word_embeddings": True, "num_key_value_heads": 1, "attention_bias": False}),
    ("mistral", {}),  # sliding window 6 on every layer, GQA 8:2
    ("mistral", {"sliding_window": None, "num_key_value_heads": 8}),
    # families beyond the first four, written in YAML only:
    ("gemma2", {}),  # sandwich norms, (1 + w) fp32 norms, embed scale, attention + final soft-cap, windows
    ("granite", {}),  # embedding / residual / attention / logits multipliers in the dataflow
    ("gemma3", {}),  # per-layer-type rope (linear-scaled global, local base), (1 + w) q/k norms
    ("qwen3_moe", {}),  # routed experts, top-2 renormalised, expert-stacked weight rules
    ("qwen3_moe", {"norm_topk_prob": False, "num_experts_per_tok": 3}),
    ("mixtral", {}),  # 4 experts top-2 + sliding window
    # families from issue 10 (tests/test_families*.py hold their language tests):
    ("phi3", {}),  # fused qkv_proj / gate_up_proj, partial rotary 0.75, default rope
    (
        "phi3",
        {
            "rope_parameters": {  # longrope, short factors (max_position == original), attention factor 4.0
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "short_factor": [1.0, 1.3, 1.9, 2.6, 3.1, 4.2],
                "long_factor": [1.5, 2.0, 3.0, 5.0, 8.0, 13.0],
            }
        },
    ),
    ("phi3", {"sliding_window": 5, "partial_rotary_factor": 1.0}),
    ("gemma", {}),  # (1 + w) fp32 norms, sqrt(hidden) embed scale, GeGLU, head_dim 24 != 96/4, tied
    ("starcoder2", {}),  # LayerNorm with bias, biases on attention and plain MLP, window 7, tied
    ("starcoder2", {"use_bias": False, "sliding_window": None, "tie_word_embeddings": False}),
    ("phi", {}),  # parallel block with one LayerNorm, partial rotary 0.5, lm_head bias
    ("phi", {"qk_layernorm": True, "tie_word_embeddings": True}),  # shared q/k LayerNorm with bias
    ("smollm3", {}),  # NoPE on every 2nd layer: rope argument chosen per layer
    ("smollm3", {"no_rope_layers": [1, 0, 0, 1], "use_sliding_window": True, "sliding_window": 4}),
    ("stablelm", {}),  # sequential residual, per-head q/k LayerNorm, partial rotary 0.25, qkv bias
    ("stablelm", {"use_parallel_residual": True, "qk_layernorm": False}),  # no post-attention norm: `if:`
    ("stablelm", {"use_parallel_residual": True, "use_qkv_bias": False, "num_key_value_heads": 1}),
    ("qwen2_moe", {}),  # dense layers 0 and 2, sparse 1 and 3 with the sigmoid-gated shared expert
    ("qwen2_moe", {"decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}),
    ("olmo2", {}),  # post-norm block, q/k RMSNorm over the whole projection
    ("olmoe", {}),  # full-width q/k RMSNorm + routed experts (extends qwen3_moe)
    ("gpt_neox", {}),  # per-head interleaved fused qkv (re-layout), parallel residual, partial rotary 0.25
    ("gpt_neox", {"use_parallel_residual": False, "attention_bias": False, "tie_word_embeddings": True}),
    ("cohere", {}),  # interleaved-pair rope (q/k re-layout), parallel block, logit scale, tied
    ("cohere", {"use_qk_norm": True, "attention_bias": True, "logit_scale": 1.0}),  # per-head q/k LayerNorm
    ("gpt2", {}),  # learned positions, transposed Conv1D weights, fused c_attn
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True, "n_inner": 200, "activation_function": "relu"}),
    # attention sinks, sliding/full layers, biased experts with clamped SwiGLU (stacked, interleaved), yarn
    ("gpt_oss", {}),
    (
        "gpt_oss",
        {
            "layer_types": ["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
            "num_key_value_heads": 4,
            "num_experts_per_tok": 3,
            "swiglu_limit": 7.0,
        },
    ),
]


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_parity_with_transformers(name: str, overrides: dict[str, Any]) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    cfg = {k: v for k, v in overrides.items() if v is not None}
    dropped = [k for k, v in overrides.items() if v is None]
    if dropped:  # remove keys from the example config entirely (e.g. head_dim -> default)
        example = {k: v for k, v in spec.spec.example_config.items() if k not in dropped}
        spec = type(spec)(spec.spec.model_copy(update={"example_config": example}), spec.source_map)
    results = parity_on_random_model(spec, cfg)
    ok, worst = verdict(results)
    assert ok, "\n".join(f"{r.name}: {r.max_abs_diff:.3e}" for r in results)
    assert len(results) == 4
    assert worst < 1e-4


def test_parity_detects_a_wrong_spec() -> None:
    """The check can fail: dropping Mistral's sliding window must break parity."""
    import dataclasses

    spec = load_spec(SPECS / "mistral.yaml")
    layers = spec.spec.model.layers
    attn = dict(layers.modules["attn"]["attention"] or {})
    attn.pop("window")
    modules = {**layers.modules, "attn": {"attention": attn}}
    broken_model = spec.spec.model.model_copy(update={"layers": layers.model_copy(update={"modules": modules})})
    broken = dataclasses.replace(spec, spec=spec.spec.model_copy(update={"model": broken_model}))
    ok, worst = verdict(parity_on_random_model(broken))
    assert not ok and worst > 1e-3
