"""The engine serves latent attention (DeepSeek-V3 layout): greedy tokens equal transformers'.

A tiny random `DeepseekV3ForCausalLM` from `specs/deepseek_v3.yaml`'s example_config, with
the demo tokenizer's vocabulary, goes through the whole engine: the compressed KV pool,
chunked prefill, batching and prefix-cache hits. Its greedy tokens must be transformers'
`generate` tokens; `generate --tp 2` must give the same tokens as TP=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import cli_generate_ids, tiny_with_demo_tokenizer

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams
from minisgl_decl.engine.loader import LoadedModel, kv_bytes_per_token, load_engine_model
from minisgl_decl.parity.hf_reference import load_reference

NEW = 20
PROMPTS = [
    "The tide comes in and the boats",
    "The tide comes in and seven sailors sat on a",
    "In the harbour at night the",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-mla")
    overrides = {"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    return tiny_with_demo_tokenizer("deepseek_v3", overrides, 5, out)


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> LoadedModel:
    return load_engine_model(EngineConfig(model=tiny, max_kv_tokens=512), progress=False)


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def test_greedy_tokens_equal_transformers(tiny: Path, loaded: LoadedModel, prompts: list[list[int]]) -> None:
    hf = load_reference(tiny, "DeepseekV3ForCausalLM")
    eos = sorted(loaded.eos_ids)
    want = []
    for p in prompts:
        with torch.inference_mode():
            ids = hf.generate(
                torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos[0]
            )
        want.append(ids[0, len(p) :].tolist())
    assert any(len(w) == NEW for w in want)  # not everything stops at once
    llm = LLM(EngineConfig(model=tiny, max_kv_tokens=512, chunked_prefill_size=4), loaded=loaded)
    greedy = SamplingParams(max_tokens=NEW, temperature=0)
    first = llm.generate(prompts[:1], greedy)  # then the others as one batch: the second shares its prefix
    rest = llm.generate(prompts[1:], greedy)
    assert [list(o.token_ids) for o in first + rest] == want
    assert first[0].cached_tokens == 0 and rest[0].cached_tokens >= 5  # "The tide comes in and" from the cache
    llm.close()


def test_kv_pool_is_sized_by_the_compressed_layout(loaded: LoadedModel, tiny: Path) -> None:
    import json

    cfg = json.loads((tiny / "config.json").read_text())
    per_layer = cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]
    assert kv_bytes_per_token(loaded) == 4 * per_layer * cfg["num_hidden_layers"]  # float32


def _generate_ids(model: Path, tp: int) -> list[str]:
    return cli_generate_ids(model, PROMPTS, tp, "--max-tokens", str(NEW), "--max-kv-tokens", "512")


@pytest.mark.slow
def test_tp2_gives_the_tokens_of_tp1(tiny: Path) -> None:
    assert _generate_ids(tiny, 2) == _generate_ids(tiny, 1)
