"""The engine at TP=2 (two processes over gloo, the launcher) gives TP=1's greedy tokens.

The demo model's 9 heads do not split over 2 ranks, so this builds a tiny random Llama
with the transformers class (8 heads, 2 KV heads, the demo tokenizer's vocabulary) and
runs `minisgl-decl generate --tp N` on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import cli_generate_ids, tiny_with_demo_tokenizer

PROMPTS = ["The tide comes in and", "Seven sailors sat on a", "In the harbour at night the"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    overrides = {
        "vocab_size": 49152,
        "num_hidden_layers": 2,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    return tiny_with_demo_tokenizer("llama", overrides, 3, out)


def generate_ids(model: Path, tp: int, overlap: str = "auto") -> list[str]:
    return cli_generate_ids(model, PROMPTS, tp, "--max-tokens", "32", "--max-kv-tokens", "1024", "--overlap", overlap)


@pytest.mark.slow
def test_tp2_gives_the_tokens_of_tp1(tiny: Path) -> None:
    one = generate_ids(tiny, 1)
    assert all(len(line.split()) == 33 for line in one), one  # 32 tokens each ("ids:" + 32)
    assert generate_ids(tiny, 2) == one


@pytest.mark.slow
def test_tp2_with_overlap_gives_the_tokens_of_tp1(tiny: Path) -> None:
    """Workers take the previous step's sampled ids from rank 0's broadcast (RUN_SAMPLED)."""
    one = generate_ids(tiny, 1)
    assert generate_ids(tiny, 2, overlap="on") == one
