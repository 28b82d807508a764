"""`serve --tp 2` on CPU (two ranks over gloo) answers with the same greedy text as `--tp 1`,
and stops cleanly (exit 0) on SIGTERM to the launching process."""

from __future__ import annotations

import openai
import pytest
from server_proc import ServerProcess, demo_model

PROMPTS = ["The capital of France is", "Water boils at"]


def _greedy_texts(server: ServerProcess) -> tuple[list[str], str]:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
    texts = [client.completions.create(model=server.model, prompt=p, max_tokens=10, temperature=0).choices[0].text
             for p in PROMPTS]
    chat = client.chat.completions.create(model=server.model, max_tokens=10, temperature=0,
                                          messages=[{"role": "user", "content": "What is the capital of France?"}])
    return texts, chat.choices[0].message.content or ""


@pytest.mark.slow
def test_tp2_matches_tp1() -> None:
    demo = demo_model()
    args = ["--model", str(demo), "--max-model-len", "256", "--max-kv-tokens", "1024"]
    results = []
    for tp in (1, 2):
        server = ServerProcess([*args, "--tp", str(tp)])
        try:
            results.append(_greedy_texts(server))
        finally:
            code = server.terminate()
        assert code == 0, server.output()
    assert results[1] == results[0]
    assert all(t.strip() for t in results[0][0])
