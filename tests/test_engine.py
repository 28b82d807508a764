"""The engine on the real demo model: greedy output equals transformers `generate`.

One model load and one set of transformers references per module. Every engine run below
(one by one, batched, tiny chunks, prefix-cache hits, a pool far too small, aborts,
the async client) must reproduce transformers' tokens exactly.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from _helpers import DEMO, chat_ids, hf_greedy, require_demo

from minisgl_decl.engine import LLM, EngineConfig, InvalidRequest, RequestOutput, SamplingParams, start_engine
from minisgl_decl.engine.loader import LoadedModel, load_engine_model

NEW = 32
SYSTEM = (
    "You are a careful assistant for a small museum of maritime history. Answer briefly and politely, "
    "in plain English, and never invent facts about the exhibits, the opening hours or the tickets."
)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Why do ships float?",
    "Name three famous sailors.",
    "How is a knot tied?",
    "What does a lighthouse do?",
]
GREEDY = SamplingParams(max_tokens=NEW, temperature=0)


@pytest.fixture(scope="module")
def demo() -> Path:
    require_demo()
    return DEMO


@pytest.fixture(scope="module")
def loaded(demo: Path) -> LoadedModel:
    return load_engine_model(EngineConfig(model=demo), progress=False)


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    """Chat prompts sharing a long system prefix (so the prefix cache has something to find)."""
    return chat_ids(
        loaded.tokenizer, [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS]
    )


@pytest.fixture(scope="module")
def expected(demo: Path, prompts: list[list[int]], loaded: LoadedModel) -> list[list[int]]:
    """transformers greedy `generate`, one prompt at a time."""
    return hf_greedy(demo, "LlamaForCausalLM", prompts, sorted(loaded.eos_ids), NEW)


def engine(loaded: LoadedModel, **kw: object) -> LLM:
    return LLM(EngineConfig(model=DEMO, **kw), loaded=loaded)  # type: ignore[arg-type]


def shared_prefix(prompts: list[list[int]]) -> int:
    n = 0
    while all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def test_one_by_one_matches_transformers(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, prefix_cache=False, max_kv_tokens=2048)
    for p, want in zip(prompts[:4], expected[:4], strict=True):
        (out,) = llm.generate([p], GREEDY)
        assert list(out.token_ids) == want
        assert out.finished and out.completion_tokens == len(want)
        assert out.finish_reason == ("stop" if len(want) < NEW else "length")
        assert out.text == loaded.tokenizer.decode(want, skip_special_tokens=True)
        assert out.cached_tokens == 0


def test_batched_matches_transformers(loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]) -> None:
    llm = engine(loaded, prefix_cache=False, max_kv_tokens=2048)
    outs = llm.generate(prompts[:4], GREEDY)
    assert [list(o.token_ids) for o in outs] == expected[:4]


def test_tiny_chunked_prefill_matches_transformers(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, chunked_prefill_size=8, max_kv_tokens=2048)
    core = llm.core
    for i, p in enumerate(prompts[:4]):
        core.add_request(str(i), p, GREEDY)
    outputs: dict[str, list[int]] = {str(i): [] for i in range(4)}
    steps = 0
    while core.has_work():
        for o in core.step():
            outputs[o.request_id] += o.token_ids
        steps += 1
    assert [outputs[str(i)] for i in range(4)] == expected[:4]
    assert steps >= sum(len(p) for p in prompts[:4]) // 8  # prefill really ran in chunks of 8


def test_prefix_cache_hits_and_output_is_unchanged(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, max_kv_tokens=2048)
    common = shared_prefix(prompts[:4])
    assert common > 40
    (first,) = llm.generate([prompts[0]], GREEDY)
    assert first.cached_tokens == 0
    rest = llm.generate(prompts[1:4], GREEDY)
    assert [list(o.token_ids) for o in [first, *rest]] == expected[:4]
    assert all(o.cached_tokens >= common for o in rest), [o.cached_tokens for o in rest]
    again = llm.generate([prompts[0]], GREEDY)[0]  # the whole prompt is cached but its last token
    assert again.cached_tokens == len(prompts[0]) - 1 and list(again.token_ids) == expected[0]
    assert llm.stats().cached_prompt_tokens == sum(o.cached_tokens for o in [first, *rest, again])


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_pool_far_too_small_still_gives_the_right_text(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]], prefix_cache: bool
) -> None:
    longest = max(len(p) for p in prompts) + NEW
    llm = engine(loaded, max_kv_tokens=longest + 40, chunked_prefill_size=64, prefix_cache=prefix_cache)
    core = llm.core
    load = [(i, f"r{i}") for i in range(len(prompts))]
    for i, rid in load:
        core.add_request(rid, prompts[i], GREEDY)
    outputs: dict[str, list[int]] = {rid: [] for _, rid in load}
    most_running = 0
    while core.has_work():
        for o in core.step():
            outputs[o.request_id] += o.token_ids
        most_running = max(most_running, core.stats().running)
    for i, rid in load:
        assert outputs[rid] == expected[i], rid
    stats = core.stats()
    assert sum(len(prompts[i]) + NEW for i, _ in load) > 2 * stats.kv_total  # far more than fits at once
    assert stats.preemptions > 0 or most_running < len(load)  # requests were preempted or had to wait
    assert stats.kv_used == stats.kv_evictable  # nothing held but the (evictable) cache


def test_rejected_at_submit_with_the_parameter_named(loaded: LoadedModel, prompts: list[list[int]]) -> None:
    llm = engine(loaded, max_kv_tokens=200, max_model_len=256)
    with pytest.raises(InvalidRequest) as too_long:
        llm.generate([prompts[0]], SamplingParams(max_tokens=250))
    assert too_long.value.param == "max_tokens" and "context length 256" in str(too_long.value)
    with pytest.raises(InvalidRequest) as pool:
        llm.generate([prompts[0]], SamplingParams(max_tokens=150))
    assert pool.value.param == "max_tokens" and "KV cache" in str(pool.value)
    with pytest.raises(InvalidRequest) as huge:
        llm.generate([list(range(300))], SamplingParams(max_tokens=1))
    assert huge.value.param == "prompt"
    with pytest.raises(InvalidRequest):
        llm.generate([[]], SamplingParams(max_tokens=1))
    assert llm.stats().kv_used == 0 and llm.stats().waiting == 0


def test_abort_frees_the_kv_and_leaves_others_alone(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    llm = engine(loaded, max_kv_tokens=2048)
    core = llm.core
    for i in range(3):
        core.add_request(str(i), prompts[i], GREEDY)
    got: dict[str, list[int]] = {"0": [], "1": [], "2": []}
    for _ in range(4):
        for o in core.step():
            got[o.request_id] += o.token_ids
    final = core.abort("1")
    assert final is not None and final.finished and final.finish_reason == "abort"
    assert core.abort("1") is None
    while core.has_work():
        for o in core.step():
            got[o.request_id] += o.token_ids
    assert got["0"] == expected[0] and got["2"] == expected[2]
    stats = core.stats()
    assert stats.running == 0 and stats.kv_used == stats.kv_evictable > 0
    assert core.flush_cache() == stats.kv_evictable
    assert core.runner.pool.available == core.runner.pool.size


def test_async_client_streams_and_cancels(
    loaded: LoadedModel, prompts: list[list[int]], expected: list[list[int]]
) -> None:
    client = start_engine(EngineConfig(model=DEMO, max_kv_tokens=2048), loaded=loaded)

    async def full(i: int) -> tuple[str, list[int], RequestOutput]:
        text, ids, last = "", [], None
        async for o in client.generate(f"full{i}", prompts[i], GREEDY):
            text, ids, last = text + o.text, ids + list(o.token_ids), o
        assert last is not None
        return text, ids, last

    async def cancelled() -> int:
        seen = 0
        async for _ in client.generate("gone", prompts[3], SamplingParams(max_tokens=NEW, temperature=0)):
            seen += 1
            if seen == 3:
                break  # the iterator is closed: the engine aborts the request
        return seen

    async def main() -> list[object]:
        return list(await asyncio.gather(full(0), cancelled(), full(2)))

    try:
        with pytest.raises(InvalidRequest):
            client.generate("bad", prompts[0], SamplingParams(max_tokens=10**6))
        (text0, ids0, last0), seen, (_, ids2, _) = asyncio.run(main())  # type: ignore[misc]
        assert ids0 == expected[0] and ids2 == expected[2] and seen == 3
        assert text0 == loaded.tokenizer.decode(expected[0], skip_special_tokens=True)
        assert last0.finished and last0.prompt_tokens == len(prompts[0])
        for _ in range(200):  # the abort lands on the engine thread
            stats = client.stats()
            if stats.running == 0 and stats.waiting == 0:
                break
            time.sleep(0.05)
        assert stats.running == 0 and stats.kv_used == stats.kv_evictable
    finally:
        client.shutdown()
