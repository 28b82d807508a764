"""Overlap scheduling on the CPU (forced on with `EngineConfig(overlap=True)`).

Under overlap the engine plans and launches step N+1 before it reads step N's tokens:
they reach the next step as device-side placeholders and the host reports them one step
late. Every run below must still give transformers' greedy tokens exactly (the truth, as
in tests/test_engine.py), end where stop strings, stop tokens and max_tokens say, and
free its KV; the last tests check that results with overlap on equal those with it off
where transformers has no counterpart (logprobs, seeded sampling).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from _helpers import DEMO, chat_ids, hf_greedy, load_demo_engine_model

from minisgl_decl.engine import LLM, EngineConfig, RequestOutput, SamplingParams, start_engine
from minisgl_decl.engine.loader import LoadedModel

NEW = 24
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Why do ships float?",
    "Name three famous sailors.",
    "What does a lighthouse do?",
]
GREEDY = SamplingParams(max_tokens=NEW, temperature=0)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_demo_engine_model()


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    return chat_ids(loaded.tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS])


@pytest.fixture(scope="module")
def expected(prompts: list[list[int]], loaded: LoadedModel) -> list[list[int]]:
    """transformers greedy `generate`, one prompt at a time."""
    return hf_greedy(DEMO, "LlamaForCausalLM", prompts, sorted(loaded.eos_ids), NEW)


def engine(loaded: LoadedModel, overlap: bool = True, **kw: object) -> LLM:
    llm = LLM(EngineConfig(model=DEMO, overlap=overlap, **kw), loaded=loaded)  # type: ignore[arg-type]
    assert llm.core.overlap is overlap
    return llm


def drain(llm: LLM, outputs: dict[str, list[RequestOutput]]) -> int:
    steps = 0
    while llm.core.has_work():
        for o in llm.core.step():
            outputs[o.request_id].append(o)
        steps += 1
    return steps


def test_tokens_arrive_one_step_late_and_match_transformers(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, max_kv_tokens=2048)
    core = llm.core
    core.add_request("a", prompts[0], GREEDY)
    assert core.step() == []  # the prefill's token is still "in flight": reported by the next step
    (first,) = core.step()
    assert first.token_ids == (expected[0][0],)
    outputs: dict[str, list[RequestOutput]] = {"a": [first]}
    drain(llm, outputs)
    got = [t for o in outputs["a"] for t in o.token_ids]
    assert got == expected[0]
    assert outputs["a"][-1].finished and outputs["a"][-1].completion_tokens == len(expected[0])
    assert all(not o.finished for o in outputs["a"][:-1])
    assert core.stats().running == 0 and not core.has_work()


def test_batched_greedy_matches_transformers(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, prefix_cache=False, max_kv_tokens=2048)
    outs = llm.generate(prompts, GREEDY)
    assert [list(o.token_ids) for o in outs] == expected
    for o, want in zip(outs, expected, strict=True):
        assert o.finish_reason == ("stop" if len(want) < NEW else "length")
        assert o.text == loaded.tokenizer.decode(want, skip_special_tokens=True)
        assert o.completion_tokens == len(want)
    stats = llm.stats()
    assert stats.running == 0 and stats.kv_used == 0
    assert llm.core.runner.pool.available == llm.core.runner.pool.size


def test_max_tokens_ends_each_request_exactly(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, max_kv_tokens=2048)
    limits = [1, 2, 5, 9, 17]
    params = [SamplingParams(max_tokens=n, temperature=0) for n in limits]
    outs = llm.generate(prompts, params)
    for o, want, n in zip(outs, expected, limits, strict=True):
        assert list(o.token_ids) == want[:n]
        assert o.completion_tokens == min(n, len(want))
        assert o.finish_reason == ("length" if len(want) > n or (len(want) == n and n == NEW) else "stop")


def test_stop_strings_and_stop_tokens_end_where_the_text_says(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    tok = loaded.tokenizer
    full = tok.decode(expected[1], skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip() and full.find(stop) > 0
    cut = 4  # a stop token: the output ends with it
    stop_id = expected[2][cut]
    assert stop_id not in expected[2][:cut]
    llm = engine(loaded, max_kv_tokens=2048)
    a, b, c = llm.generate(
        [prompts[1], prompts[2], prompts[0]],
        [
            SamplingParams(max_tokens=NEW, temperature=0, stop=(stop,)),
            SamplingParams(max_tokens=NEW, temperature=0, stop_token_ids=(stop_id,)),
            GREEDY,
        ],
    )
    assert a.finish_reason == "stop" and a.text == full[: full.find(stop)]
    assert list(a.token_ids) == expected[1][: len(a.token_ids)]
    assert b.finish_reason == "stop" and list(b.token_ids) == expected[2][: cut + 1]
    assert list(c.token_ids) == expected[0]  # the batch neighbour is untouched by the others' early ends
    assert llm.stats().kv_used == llm.stats().kv_evictable


def test_abort_in_flight_frees_the_kv_and_leaves_others_alone(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, max_kv_tokens=2048)
    core = llm.core
    for i in range(3):
        core.add_request(str(i), prompts[i], GREEDY)
    outputs: dict[str, list[RequestOutput]] = {"0": [], "1": [], "2": []}
    for _ in range(5):
        for o in core.step():
            outputs[o.request_id].append(o)
    assert core._inflight is not None  # a step is running while the abort arrives
    final = core.abort("1")
    assert final is not None and final.finished and final.finish_reason == "abort"
    ids1 = [t for o in [*outputs["1"], final] for t in o.token_ids]
    assert ids1 == expected[1][: len(ids1)] and final.completion_tokens == len(ids1)
    drain(llm, outputs)
    assert [t for o in outputs["0"] for t in o.token_ids] == expected[0]
    assert [t for o in outputs["2"] for t in o.token_ids] == expected[2]
    stats = core.stats()
    assert stats.running == 0 and stats.kv_used == stats.kv_evictable > 0
    assert core.flush_cache() == stats.kv_evictable
    assert core.runner.pool.available == core.runner.pool.size


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_preemption_and_tiny_chunks_under_overlap(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]], prefix_cache: bool
) -> None:
    longest = max(len(p) for p in prompts) + NEW
    llm = engine(loaded, max_kv_tokens=longest + 30, chunked_prefill_size=16, prefix_cache=prefix_cache)
    core = llm.core
    for i, p in enumerate(prompts):
        core.add_request(f"r{i}", p, GREEDY)
    outputs: dict[str, list[RequestOutput]] = {f"r{i}": [] for i in range(len(prompts))}
    drain(llm, outputs)
    for i, want in enumerate(expected):
        assert [t for o in outputs[f"r{i}"] for t in o.token_ids] == want, i
    stats = core.stats()
    assert stats.preemptions > 0  # requests were preempted with a token still in flight
    assert stats.kv_used == stats.kv_evictable


def test_logprobs_and_seeded_sampling_equal_with_overlap_on_and_off(
    loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    params = [
        SamplingParams(max_tokens=12, temperature=0, logprobs=True, top_logprobs=3),
        SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, seed=7),
        SamplingParams(max_tokens=12, temperature=1.0, top_k=20, seed=11, repetition_penalty=1.3),
    ]
    runs = []
    for overlap in (False, True):
        llm = engine(loaded, overlap=overlap, max_kv_tokens=2048)
        runs.append(llm.generate(prompts[:3], params))
    off, on = runs
    for a, b in zip(off, on, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
    assert off[0].logprobs is not None and on[0].logprobs is not None
    for x, y in zip(off[0].logprobs, on[0].logprobs, strict=True):
        assert x.token_id == y.token_id and x.logprob == pytest.approx(y.logprob, abs=1e-6)
        assert [t for t, _ in x.top] == [t for t, _ in y.top]


def test_async_client_with_overlap_streams_and_cancels(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    client = start_engine(EngineConfig(model=DEMO, max_kv_tokens=2048, overlap=True), loaded=loaded)

    async def full(i: int) -> list[int]:
        ids: list[int] = []
        async for o in client.generate(f"full{i}", prompts[i], GREEDY):
            ids += o.token_ids
        return ids

    async def cancelled() -> int:
        seen = 0
        async for _ in client.generate("gone", prompts[3], GREEDY):
            seen += 1
            if seen == 3:
                break
        return seen

    async def main() -> list[object]:
        return list(await asyncio.gather(full(0), cancelled(), full(4)))

    try:
        ids0, seen, ids4 = asyncio.run(main())
        assert ids0 == expected[0] and ids4 == expected[4] and seen == 3
        for _ in range(200):
            stats = client.stats()
            if stats.running == 0 and stats.waiting == 0:
                break
            time.sleep(0.05)
        assert stats.running == 0 and stats.kv_used == stats.kv_evictable
    finally:
        client.shutdown()
