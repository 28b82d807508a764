"""The engine serving a tiny random GPT-OSS (attention sinks, sliding/full layers, biased
experts with a clamped SwiGLU, yarn rope): greedy tokens equal transformers `generate`.

The prompts are longer than the sliding window, so decode runs past it; the batch runs
with tiny prefill chunks and the prefix cache, so cached-prefix + extend is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import tiny_with_demo_tokenizer

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams
from minisgl_decl.engine.loader import load_engine_model
from minisgl_decl.parity.hf_reference import load_reference

NEW = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-gpt-oss")
    overrides = {"vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 6}
    return tiny_with_demo_tokenizer("gpt_oss", overrides, 5, out)


def test_engine_greedy_equals_transformers(tiny: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    shared = torch.randint(3, 49152, (9,), generator=gen).tolist()
    prompts = [shared + torch.randint(3, 49152, (n,), generator=gen).tolist() for n in (4, 11, 1)]
    hf = load_reference(tiny, "GptOssForCausalLM")
    expected = []
    for p in prompts:
        with torch.inference_mode():
            ids = hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=2, pad_token_id=2)
        expected.append(ids[0, len(p) :].tolist())
    assert all(len(e) == NEW for e in expected)  # random weights: no early EOS, every step compared
    config = EngineConfig(model=tiny, max_kv_tokens=512, chunked_prefill_size=4)
    loaded = load_engine_model(config, progress=False)
    llm = LLM(config, loaded=loaded)
    greedy = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
    (first,) = llm.generate([prompts[0]], greedy)
    assert list(first.token_ids) == expected[0]
    outs = llm.generate(prompts, greedy)  # batched, chunked, the shared prefix now cached
    assert [list(o.token_ids) for o in outs] == expected
    assert sum(o.cached_tokens for o in outs) > 0
