"""Random-weight checkpoints at real model shapes for the GPU benchmarks (no download needed).

`SHAPES` maps a name to (spec name, transformers config). `write_random_checkpoint` writes a
checkpoint in transformers' own format without running any model init: the transformers
class is built on the meta device (names and shapes only), its storage is allocated
uninitialised on the target device (`to_empty`), filled there in bf16 from a seeded
generator the way transformers' `_init_weights` scales it (matrices and embeddings
N(0, initializer_range), norm scales 1, biases 0; no float32 copy), and saved by
`save_pretrained` (safetensors, config.json, generation_config.json; for MoE the hub's
per-expert tensors), with a word-level tokenizer of the right vocabulary size
(`minisgl_decl.parity.tokenizer`). `build_checkpoint` returns what the bounds need: the bytes
of every weight and the bytes one batch-1 decode step reads (of routed experts only top_k / E).
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
    "tiny-qwen3-moe": (
        "qwen3_moe",
        {
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "hidden_size": 64,
            "intermediate_size": 128,
            "moe_intermediate_size": 32,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 512,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": True,
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


def _hf_config(cfg: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    return AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})


@torch.no_grad()
def fill_random_(model: torch.nn.Module, std: float, seed: int) -> None:
    """Seeded values in place, scaled like transformers' init: matrices (and stacked experts) N(0, std),
    1-D biases 0, other 1-D parameters (norm scales) 1."""
    names = dict(model.named_parameters())  # tied parameters once
    buffers = set(model.state_dict()) - {n for n, _ in model.named_parameters(remove_duplicate=False)}
    if buffers:
        raise ValueError(f"persistent buffers the random writer cannot fill: {sorted(buffers)[:5]}")
    device = next(iter(names.values())).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in names.items():
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=gen)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)


def write_random_checkpoint(cfg: dict[str, Any], directory: Path, device: str = "cuda", seed: int = 0) -> None:
    """A bf16 checkpoint of the transformers class for `cfg` with seeded random weights, written to `directory`."""
    from transformers import AutoModelForCausalLM

    from minisgl_decl.parity.tokenizer import write_word_tokenizer

    config = _hf_config(cfg)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    hf = hf.to_empty(device=device)
    hf.tie_weights()  # to_empty gives tied parameters separate storage: tie them again
    fill_random_(hf, float(getattr(config, "initializer_range", 0.02)), seed)
    hf.save_pretrained(directory, safe_serialization=True)
    del hf
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    write_word_tokenizer(directory, cfg["vocab_size"])


def checkpoint_bytes(directory: Path, cfg: dict[str, Any]) -> tuple[int, float]:
    """(bytes of every stored tensor, bytes one batch-1 decode step reads: routed experts count top_k / E)."""
    from safetensors import safe_open

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
    return total, total - experts + experts * share


def build_checkpoint(name: str, directory: Path, device: str = "cuda") -> Checkpoint:
    """Write the random checkpoint of shape `name` (bf16, seed 0) and its tokenizer to `directory`."""
    spec, cfg = SHAPES[name]
    write_random_checkpoint(cfg, directory, device, seed=0)
    total, active = checkpoint_bytes(directory, cfg)
    (directory / "bench_shape.json").write_text(json.dumps({"shape": name, "config": cfg}))
    return Checkpoint(directory, spec, cfg["vocab_size"], total, active)


def shape_names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {sorted(SHAPES)}")
    return names


def describe(name: str) -> dict[str, Any]:
    return SHAPES[name][1]
