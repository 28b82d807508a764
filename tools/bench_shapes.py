"""Random-weight checkpoints at real model shapes for the GPU benchmarks (no download needed).

`SHAPES` maps a name to (spec name, transformers config). `build_checkpoint` makes the
transformers model with random weights (HF init, bf16) on the GPU, saves it as safetensors
with a word-level tokenizer of the right vocabulary size (`minisgl_decl.parity.tokenizer`),
frees the GPU copy and returns what the bounds need: the bytes of every weight and the
bytes one batch-1 decode step reads (of routed experts only top_k / E).
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # a few MB: smoke tests of the tools on a CPU
    "tiny-llama": (
        "llama",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 512,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
    ),
    "qwen3-0.6b": (
        "qwen3",
        {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": True,
        },
    ),
    "llama3-8b": (
        "llama",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": False,
        },
    ),
    # Qwen3-30B-A3B with 12 of its 48 layers (fits twice on one card: ours + transformers)
    "qwen3-30b-a3b-12l": (
        "qwen3_moe",
        {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "num_hidden_layers": 12,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": False,
        },
    ),
}


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    spec: str
    vocab: int
    weight_bytes: int  # every parameter, as stored (bf16)
    active_bytes: float  # read by one batch-1 decode step: routed experts count top_k / E


def build_checkpoint(name: str, directory: Path, device: str = "cuda") -> Checkpoint:
    """Save a random transformers model of shape `name` (bf16) and its tokenizer to `directory`."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from minisgl_decl.parity.tokenizer import write_word_tokenizer

    spec, cfg = SHAPES[name]
    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    hf.save_pretrained(directory, safe_serialization=True)
    del hf
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    write_word_tokenizer(directory, cfg["vocab_size"])
    total = experts = 0
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                t = st.get_slice(key)
                n = 2
                for d in t.get_shape():
                    n *= d
                total += n
                if ".experts." in key:
                    experts += n
    share = cfg.get("num_experts_per_tok", 1) / cfg.get("num_experts", 1) if experts else 1.0
    (directory / "bench_shape.json").write_text(json.dumps({"shape": name, "config": cfg}))
    return Checkpoint(directory, spec, cfg["vocab_size"], total, total - experts + experts * share)


def shape_names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
    return names


def describe(name: str) -> dict[str, Any]:
    return SHAPES[name][1]
