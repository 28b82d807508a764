"""`min_tokens` (vLLM's): EOS / stop_token_ids cannot be sampled before that many tokens were
generated; afterwards they can. Checked on the sampler with logits that favour a stop token
as much as possible, and end to end on the offline engine with the demo model."""

from __future__ import annotations

import pytest
import torch
from _helpers import DEMO, require_demo

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams
from minisgl_decl.engine.api import InvalidRequest
from minisgl_decl.engine.sampling import Sampler

CPU = torch.device("cpu")
VOCAB = 64
EOS, STOP = 7, 9


def _favour(tokens: list[int], rows: int = 1) -> torch.Tensor:
    """Logits where `tokens` are overwhelmingly the most likely (token 5 comes next)."""
    logits = torch.zeros(rows, VOCAB)
    logits[:, 5] = 10.0
    logits[:, tokens] = 50.0
    return logits


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stop_tokens_masked_until_min_tokens(temperature: float) -> None:
    sampler = Sampler(VOCAB, CPU)
    params = SamplingParams(max_tokens=10, min_tokens=3, temperature=temperature, seed=0, logprobs=True)
    sampler.add(1, params, [1, 2], stop_ids=frozenset({EOS, STOP}))
    sampler.add(2, SamplingParams(max_tokens=10, temperature=0.0), [1], stop_ids=frozenset({EOS}))  # no min_tokens
    got1, got2 = [], []
    for _ in range(5):
        out = sampler.sample(_favour([EOS, STOP], rows=2), [1, 2])
        got1.append(out[0].token_id)
        got2.append(out[1].token_id)
        # reported logprobs describe the model's raw logits, not the mask
        assert out[0].logprob is not None and out[0].logprob.logprob == pytest.approx(
            float(torch.log_softmax(_favour([EOS, STOP])[0], -1)[out[0].token_id])
        )
    assert got1[:3] == [5, 5, 5]  # the next most likely token while the stops are masked
    assert all(t in (EOS, STOP) for t in got1[3:])  # then the stops are allowed again
    assert got2 == [EOS] * 5  # another row in the same batch is not affected


def test_min_tokens_zero_or_no_stop_ids_changes_nothing() -> None:
    sampler = Sampler(VOCAB, CPU)
    sampler.add(1, SamplingParams(min_tokens=0, temperature=0.0), [], stop_ids=frozenset({EOS}))
    sampler.add(2, SamplingParams(min_tokens=4, temperature=0.0), [], stop_ids=frozenset())
    assert [s.token_id for s in sampler.sample(_favour([EOS], rows=2), [1, 2])] == [EOS, EOS]


def test_min_tokens_validation() -> None:
    with pytest.raises(InvalidRequest, match="min_tokens") as err:
        SamplingParams(max_tokens=4, min_tokens=5)
    assert err.value.param == "min_tokens"
    with pytest.raises(InvalidRequest, match="min_tokens"):
        SamplingParams(min_tokens=-1)


@pytest.mark.parametrize("overlap", [False, True])
def test_engine_min_tokens_defers_a_stop_token(overlap: bool) -> None:
    require_demo()
    llm = LLM(EngineConfig(model=DEMO, max_kv_tokens=512, overlap=overlap))
    try:
        prompt = llm.loaded.tokenizer("The capital of France is")["input_ids"]
        free = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))[0]
        first = free.token_ids[0]
        # that first token as a stop token: without min_tokens the request stops at once
        stopped = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=(first,)))[0]
        assert stopped.finish_reason == "stop" and stopped.completion_tokens == 1
        held = llm.generate(
            [prompt], SamplingParams(max_tokens=6, min_tokens=3, temperature=0.0, stop_token_ids=(first,))
        )[0]
        assert first not in held.token_ids[:3] and held.completion_tokens >= 3
    finally:
        llm.close()
