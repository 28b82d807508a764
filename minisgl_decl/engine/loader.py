"""Load what an engine needs from an `EngineConfig`: the model shard, tokenizer, EOS ids, limits.

Also sizes the KV pool: on CUDA `mem_fraction` of the free memory after the weights
(the smallest over the ranks), on CPU `max_kv_tokens` or a default from the model size.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..pipeline import Compiled, compile_spec, load_model
from ..plan.checkpoint import load_config
from ..runtime.distributed import GroupComm
from ..runtime.model import CompiledModel
from ..spec.find import find_spec
from ..validate import load_valid_spec
from .api import EngineConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_MODEL_LEN = 4096  # when config.json names no max_position_embeddings
CPU_KV_BUDGET = (256 << 20, 1 << 30)  # CPU default pool: the weights' bytes, clamped to this range


@dataclass
class LoadedModel:
    """A rank's model shard with everything the engine derives from the checkpoint."""

    model: CompiledModel
    compiled: Compiled
    tokenizer: Any  # transformers tokenizer (rank 0), None on other ranks
    eos_ids: frozenset[int]
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    max_model_len: int
    model_name: str
    weight_bytes: int


def _hf_value(hf: dict[str, Any], key: str) -> Any:
    text = hf.get("text_config")
    if isinstance(text, dict) and key in text:
        return text[key]
    return hf.get(key)


def eos_ids_of(model_dir: Path, tokenizer: Any) -> frozenset[int]:
    """EOS ids from generation_config.json (an int or a list) and the tokenizer."""
    ids: set[int] = set()
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text()).get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def resolve_dtype(config: EngineConfig, device: torch.device) -> torch.dtype:
    name = config.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    if name not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_engine_model(
    config: EngineConfig, comm: GroupComm | None = None, *, progress: bool | None = None
) -> LoadedModel:
    model_dir = Path(config.model)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: not a checkpoint directory (no config.json)")
    hf = load_config(model_dir)
    spec = load_valid_spec(config.spec) if config.spec is not None else find_spec(hf)
    tp = comm.size if comm is not None else 1
    if config.tp != tp:
        raise UserError(f"--tp {config.tp} but the process group has {tp} rank(s)")
    compiled = compile_spec(spec, model_dir, tp)
    rank = comm.rank if comm is not None else 0
    device = comm.device if comm is not None else torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = resolve_dtype(config, device)
    model = load_model(compiled, rank, device=device, dtype=dtype, progress=progress)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    tokenizer = None
    if rank == 0:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    native = _hf_value(dict(hf), "max_position_embeddings")
    native_len = int(native) if isinstance(native, int) and native > 0 else DEFAULT_MAX_MODEL_LEN
    max_len = config.max_model_len if config.max_model_len is not None else native_len
    if max_len < 2:
        raise UserError(f"--max-model-len must be at least 2, got {max_len}")
    vocab = _hf_value(dict(hf), "vocab_size")
    return LoadedModel(
        model,
        compiled,
        tokenizer,
        eos_ids_of(model_dir, tokenizer),
        device,
        dtype,
        int(vocab) if isinstance(vocab, int) else 0,
        max_len,
        model_dir.name,
        weight_bytes,
    )


def kv_bytes_per_token(loaded: LoadedModel) -> int:
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    return loaded.model.kv_elements_per_token() * elem


def kv_pool_tokens(config: EngineConfig, loaded: LoadedModel, comm: GroupComm | None) -> int:
    """Slots in the KV pool (the same on every rank)."""
    per_token = max(1, kv_bytes_per_token(loaded))
    if loaded.device.type == "cuda":
        if not 0 < config.mem_fraction <= 1:
            raise UserError(f"--mem-fraction must be in (0, 1], got {config.mem_fraction}")
        torch.cuda.synchronize(loaded.device)
        free, _ = torch.cuda.mem_get_info(loaded.device)
        tokens = int(free * config.mem_fraction) // per_token
    elif config.max_kv_tokens is not None:
        tokens = config.max_kv_tokens
    else:
        lo, hi = CPU_KV_BUDGET
        tokens = min(max(loaded.weight_bytes, lo), hi) // per_token
    if config.max_kv_tokens is not None:
        tokens = min(tokens, config.max_kv_tokens)
    if comm is not None and comm.size > 1:
        t = torch.tensor([tokens], dtype=torch.int64, device=comm.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=comm.group)
        tokens = int(t.item())
    if tokens < 1:
        raise UserError(f"no room for a KV pool: {tokens} tokens (lower --mem-fraction's load or free memory)")
    return tokens


def announce(loaded: LoadedModel, tokens: int, chunk: int, max_len: int) -> None:
    per_token = kv_bytes_per_token(loaded)
    print(
        f"engine: {loaded.model_name} on {loaded.device} ({str(loaded.dtype).removeprefix('torch.')}), "
        f"tp={loaded.compiled.graph.tp}, weights {loaded.weight_bytes / 2**20:.0f} MiB; "
        f"KV pool {tokens} tokens x {per_token} B = {tokens * per_token / 2**20:.0f} MiB; "
        f"max_model_len {max_len}, chunked prefill {chunk} tokens",
        file=sys.stderr,
        flush=True,
    )
