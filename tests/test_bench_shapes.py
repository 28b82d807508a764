"""tools/bench_shapes.py: the random-weight checkpoint writer (no model init, bf16 drawn on the device).

The reference for names, shapes and dtypes is transformers' own path: the same class built
with its init (`from_config`) and written by `save_pretrained`. The checkpoint must load in
transformers (nothing missing or unexpected, finite logits) and through our loader plan."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import ROOT, SPECS
from safetensors import safe_open

sys.path.insert(0, str(ROOT / "tools"))

from bench_shapes import SHAPES, build_checkpoint, checkpoint_bytes, write_random_checkpoint

TINY_QWEN3_TIED: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 300,
    "tie_word_embeddings": True,
}
CASES = {
    "llama": SHAPES["tiny-llama"],
    "qwen3-tied": ("qwen3", TINY_QWEN3_TIED),
    "qwen3-moe": SHAPES["tiny-qwen3-moe"],
}


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118
                out[key] = st.get_tensor(key)
    return out


def _hf_reference(cfg: dict[str, Any], directory: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(directory)
    return _tensors(directory)


@pytest.mark.parametrize("case", sorted(CASES))
def test_writer_matches_transformers_format(case: str, tmp_path: Path) -> None:
    _, cfg = CASES[case]
    ours = tmp_path / "ours"
    write_random_checkpoint(cfg, ours, "cpu", seed=0)
    got = _tensors(ours)
    ref = _hf_reference(cfg, tmp_path / "ref")
    assert {k: (tuple(v.shape), v.dtype) for k, v in got.items()} == {
        k: (tuple(v.shape), v.dtype) for k, v in ref.items()
    }
    assert all(v.dtype == torch.bfloat16 for v in got.values())
    if cfg.get("tie_word_embeddings"):
        assert "lm_head.weight" not in got and "model.embed_tokens.weight" in got
    if cfg["model_type"] == "qwen3_moe":  # the hub's per-expert tensors
        assert f"model.layers.0.mlp.experts.{cfg['num_experts'] - 1}.down_proj.weight" in got
    saved = json.loads((ours / "config.json").read_text())
    assert saved["architectures"] == cfg["architectures"] and saved["vocab_size"] == cfg["vocab_size"]
    assert (ours / "generation_config.json").is_file() and (ours / "tokenizer.json").is_file()


@pytest.mark.parametrize("case", sorted(CASES))
def test_writer_values_scaled_like_hf_init(case: str, tmp_path: Path) -> None:
    _, cfg = CASES[case]
    write_random_checkpoint(cfg, tmp_path, "cpu", seed=0)
    matrices = []
    for key, t in _tensors(tmp_path).items():
        x = t.float()
        assert torch.isfinite(x).all(), key
        if t.dim() >= 2:
            matrices.append(x.flatten())
            assert x.abs().max() < 0.02 * 7, key  # N(0, 0.02): nothing far out in the tail
        else:  # RMSNorm scales
            assert torch.equal(x, torch.ones_like(x)), key
    flat = torch.cat(matrices)
    assert abs(flat.mean().item()) < 1e-3
    assert flat.std().item() == pytest.approx(0.02, rel=0.02)


def test_writer_is_seeded(tmp_path: Path) -> None:
    cfg = SHAPES["tiny-llama"][1]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_random_checkpoint(cfg, tmp_path / name, "cpu", seed=seed)
    a, b, c = (_tensors(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_loads_it(case: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    _, cfg = CASES[case]
    write_random_checkpoint(cfg, tmp_path, "cpu", seed=0)
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert next(model.parameters()).dtype == torch.bfloat16
    stored = _tensors(tmp_path)
    assert torch.equal(model.get_input_embeddings().weight.detach(), stored["model.embed_tokens.weight"])
    with torch.no_grad():
        logits = model(torch.randint(0, cfg["vocab_size"], (2, 9))).logits
    assert torch.isfinite(logits).all() and logits.float().std() > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_our_loader_loads_it(case: str, tmp_path: Path) -> None:
    from minisgl_decl.pipeline import compile_spec, load_model
    from minisgl_decl.spec.compile import load_ir

    spec, cfg = CASES[case]
    write_random_checkpoint(cfg, tmp_path, "cpu", seed=0)
    model = load_model(compile_spec(load_ir(SPECS / f"{spec}.yaml"), tmp_path), device="cpu", dtype=torch.bfloat16)
    params = list(model.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    # every stored element lands in one of our parameters (fused, stacked or not); a tied embedding
    # also fills the LM head
    stored = sum(t.numel() for t in _tensors(tmp_path).values())
    head = cfg["vocab_size"] * cfg["hidden_size"] if cfg.get("tie_word_embeddings") else 0
    assert sum(p.numel() for p in params) == stored + head


def test_bytes_for_the_bound(tmp_path: Path) -> None:
    spec, cfg = SHAPES["tiny-qwen3-moe"]
    ckpt = build_checkpoint("tiny-qwen3-moe", tmp_path, "cpu")
    assert ckpt.spec == spec and ckpt.vocab == cfg["vocab_size"]
    h, v, layers, e, k, inter = (
        cfg[n]
        for n in (
            "hidden_size",
            "vocab_size",
            "num_hidden_layers",
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
        )
    )
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    attn = h * q + 2 * h * kv + q * h + 2 * cfg["head_dim"]  # q, k, v, o and the q/k norms
    dense = v * h + layers * (attn + 2 * h + e * h) + h  # tied embedding, per layer: attention, 2 norms, router
    experts = layers * e * 3 * h * inter
    assert ckpt.weight_bytes == 2 * (dense + experts)
    assert ckpt.active_bytes == pytest.approx(2 * (dense + experts * k / e))
    assert checkpoint_bytes(tmp_path, cfg) == (ckpt.weight_bytes, ckpt.active_bytes)
    assert json.loads((tmp_path / "bench_shape.json").read_text())["shape"] == "tiny-qwen3-moe"
