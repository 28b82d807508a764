"""Write a large Llama-shaped HF checkpoint (config.json + safetensors shards), one tensor in memory.

Tensors are generated and written one at a time (the safetensors layout is an 8-byte
header length, a JSON header with byte offsets, then the raw little-endian data), so
a 2 GB checkpoint needs only one tensor of memory. Used by the loader memory test and
`tools/bench_load.py`; the values are random (uniform), good for loading, not for text.

    python tools/make_checkpoint.py OUT_DIR --gb 2.2 [--shard-gb 1] [--dtype BF16]
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import torch

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


Shapes = list[tuple[str, tuple[int, ...]]]


def llama_tensors(hidden: int, ffn: int, layers: int, vocab: int, heads: int, kv_heads: int) -> Shapes:
    hd = hidden // heads
    out: Shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (hidden,)),
            (f"{p}.self_attn.q_proj.weight", (heads * hd, hidden)),
            (f"{p}.self_attn.k_proj.weight", (kv_heads * hd, hidden)),
            (f"{p}.self_attn.v_proj.weight", (kv_heads * hd, hidden)),
            (f"{p}.self_attn.o_proj.weight", (hidden, heads * hd)),
            (f"{p}.post_attention_layernorm.weight", (hidden,)),
            (f"{p}.mlp.gate_proj.weight", (ffn, hidden)),
            (f"{p}.mlp.up_proj.weight", (ffn, hidden)),
            (f"{p}.mlp.down_proj.weight", (hidden, ffn)),
        ]
    return [*out, ("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def write_safetensors(path: Path, tensors: Shapes, dtype: str, seed: int) -> None:
    esize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    header: dict[str, object] = {}
    offset = 0
    for key, shape in tensors:
        n = _numel(shape) * esize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _key, shape in tensors:
            t = torch.empty(shape, dtype=DTYPES[dtype]).uniform_(-0.05, 0.05, generator=gen)
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            del t


def make_checkpoint(
    out: str | Path,
    *,
    hidden: int,
    ffn: int,
    layers: int,
    vocab: int,
    heads: int,
    kv_heads: int,
    dtype: str = "F32",
    shard_bytes: int = 1 << 30,
    seed: int = 0,
) -> Path:
    """A Llama checkpoint in `out`, split into shards of about `shard_bytes` with an index.json."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    esize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    shards: list[Shapes] = [[]]
    size = 0
    for key, shape in llama_tensors(hidden, ffn, layers, vocab, heads, kv_heads):
        n = _numel(shape) * esize
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += n
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for i, (name, shard) in enumerate(zip(names, shards, strict=True)):
        write_safetensors(d / name, shard, dtype, seed + i)
        weight_map.update({k: name for k, _ in shard})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype],
    }
    (d / "config.json").write_text(json.dumps(config, indent=1))
    return d


def sized(gb: float, dtype: str = "F32") -> dict[str, int]:
    """Llama sizes (hidden 2048, ffn 5632, vocab 32000, GQA 16:4) with enough layers for `gb` GiB."""
    esize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    hidden, ffn, vocab, heads, kv = 2048, 5632, 32000, 16, 4
    per_layer = (hidden * hidden * 2 + 2 * (kv * hidden // heads) * hidden + 3 * hidden * ffn) * esize
    fixed = 2 * vocab * hidden * esize
    layers = max(1, round((gb * 2**30 - fixed) / per_layer))
    return {"hidden": hidden, "ffn": ffn, "layers": layers, "vocab": vocab, "heads": heads, "kv_heads": kv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--gb", type=float, default=2.2, help="approximate size in GiB")
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="F32")
    a = ap.parse_args()
    d = make_checkpoint(a.out, **sized(a.gb, a.dtype), dtype=a.dtype, shard_bytes=int(a.shard_gb * 2**30))
    total = sum(p.stat().st_size for p in d.glob("*.safetensors"))
    print(f"wrote {d} ({total / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
