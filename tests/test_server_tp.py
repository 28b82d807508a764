"""`serve --tp 2` on CPU (two ranks over gloo) answers with the same greedy text as `--tp 1`,
and stops cleanly (exit 0) on SIGTERM to the launching process. The KV pool is smaller
than the context here, so the engine's own admission check (an `InvalidRequest` -> 400
naming `max_tokens`) is exercised through the server as well.

SmolLM2-135M has 9 query heads, which 2 ranks cannot split, so this runs a small random
Llama built with the transformers class (4 heads, 2 KV heads) that carries the demo
model's tokenizer and chat template: the text is nonsense, but greedy text through the
real server at TP=1 and TP=2 must be identical.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from server_proc import ServerProcess, demo_model

PROMPTS = ["The capital of France is", "Water boils at"]


def _tiny_llama(out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(demo_model()))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _greedy_texts(server: ServerProcess) -> tuple[list[str], str]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    texts = [
        client.completions.create(
            model=server.model, prompt=p, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
        for p in PROMPTS
    ]
    chat = client.chat.completions.create(
        model=server.model,
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    return texts, chat.choices[0].message.content or ""


def _engine_rejects_beyond_pool(server: ServerProcess) -> None:
    """prompt + max_tokens fits the context (256) but not the KV pool (200): the engine's InvalidRequest -> 400."""
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "hi", "max_tokens": 240}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "max_tokens" and "KV cache" in error["message"], error


@pytest.mark.slow
def test_tp2_matches_tp1(tmp_path: Path) -> None:
    model = _tiny_llama(tmp_path / "tiny-llama")
    args = ["--model", str(model), "--max-model-len", "256", "--max-kv-tokens", "200"]
    results = []
    for tp in (1, 2):
        server = ServerProcess([*args, "--tp", str(tp)])
        try:
            results.append(_greedy_texts(server))
            _engine_rejects_beyond_pool(server)
        finally:
            code = server.terminate()
        assert code == 0, server.output()
    assert results[1] == results[0]
    assert all(t for t in results[0][0]) and results[0][1]
