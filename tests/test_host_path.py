"""The cheap host paths of a decode step (issue 8): each one against what it replaces.

- the direct `tokenizers` decode against transformers' `tokenizer.decode` (the truth);
- a plain stream chunk built from its pre-encoded template against the OpenAI chunk written
  out here and serialised by `json.dumps`;
- `StepBatch.build` (one host tensor) against the field lists it was given, and its TP
  round trip;
- `AsyncEngine` handing a whole step's outputs to the event loop in one call: every request
  still gets its deltas in order, equal to the offline engine's.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

import pytest
import torch
from _helpers import DEMO, ROOT

from minisgl_decl.engine.api import RequestOutput, SamplingParams
from minisgl_decl.engine.detokenize import window_decoder
from minisgl_decl.runtime.runner import StepBatch

sys.path.insert(0, str(ROOT / "tools"))
from minisgl_decl.server.prepare import Job
from minisgl_decl.server.responses import Choices


def _demo_tokenizer() -> Any:
    if not (DEMO / "tokenizer.json").exists():
        pytest.skip("demo tokenizer missing: run `python tools/prepare_demo_model.py`")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO))


@pytest.mark.parametrize("skip", [True, False])
def test_direct_decode_equals_transformers_decode(skip: bool) -> None:
    tok = _demo_tokenizer()
    decode = window_decoder(tok, skip)
    rng = random.Random(7)
    specials = list(tok.all_special_ids)
    for n in (1, 2, 3, 5, 9, 17):
        for _ in range(40):
            ids = [rng.randrange(len(tok)) for _ in range(n)]
            if rng.random() < 0.3:
                ids[rng.randrange(n)] = rng.choice(specials)
            want = tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert decode(ids) == want, ids


def test_other_tokenizers_go_through_their_decode() -> None:
    calls: list[tuple[list[int], bool, bool | None]] = []

    class Fake:
        def decode(
            self,
            token_ids: list[int],
            *,
            skip_special_tokens: bool = False,
            clean_up_tokenization_spaces: bool | None = None,
        ) -> str:
            calls.append((token_ids, skip_special_tokens, clean_up_tokenization_spaces))
            return "x" * len(token_ids)

    assert window_decoder(Fake(), True)([1, 2]) == "xx"
    assert calls == [([1, 2], True, False)]


def _out(text: str, finished: bool = False) -> RequestOutput:
    return RequestOutput("r", text, (5,), None, finished, "length" if finished else None, 3, 2, 0)


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("text", ["plain", 'quote " back\\slash', "new\nline\ttab", "é世🎉", "nul \x00 bell \x07"])
def test_plain_completion_chunk_is_the_openai_json(text: str, usage: bool) -> None:
    job = Job(index=2, prompt_index=0, prompt_ids=[1, 2, 3], params=SamplingParams())
    ch = Choices("completion", "my-model", "abc", [job], tokenizer=None)
    for piece in ("first ", text):  # the template is built by the first chunk, reused by the second
        out = _out(piece)
        ch.add(job, out)
        body: dict[str, Any] = {
            "id": "cmpl-abc",
            "object": "text_completion",
            "created": ch.created,
            "model": "my-model",
            "choices": [{"index": 2, "text": piece, "logprobs": None, "finish_reason": None}],
        }
        if usage:
            body["usage"] = None
        got = ch.chunk(job, out, usage)
        assert got == f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
        assert got is not None and json.loads(got[len("data: ") :]) == body


@pytest.mark.parametrize("text", ["hello", '"{x}"', "ß\n"])
def test_plain_chat_chunk_is_the_openai_json(text: str) -> None:
    job = Job(index=0, prompt_index=0, prompt_ids=[1], params=SamplingParams())
    ch = Choices("chat", "m", "id1", [job], tokenizer=None)
    chunks = []
    for piece in ("a", text, text):
        out = _out(piece)
        ch.add(job, out)
        chunks.append(ch.chunk(job, out, False))
    for i, (got, piece) in enumerate(zip(chunks, ("a", text, text), strict=True)):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        body = {
            "id": "chatcmpl-id1",
            "object": "chat.completion.chunk",
            "created": ch.created,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
        assert got == f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
    last = _out("", finished=True)
    ch.add(job, last)
    final = ch.chunk(job, last, False)
    assert final is not None and json.loads(final[6:])["choices"][0]["finish_reason"] == "length"


def test_step_batch_is_one_tensor_with_the_given_fields() -> None:
    step = StepBatch.build(
        [11, -1, 13, 14], [0, 5, 6, 7], [40, 41, 42, 43], [2, 0], [1, 3], [1, 8], [0, 3], ([2], [0], [99]), False
    )
    fields = {  # in the payload's order (the CUDA-graph inputs first: token, position, slot, row, length)
        "tokens": [11, -1, 13, 14],
        "positions": [0, 5, 6, 7],
        "out_slots": [40, 41, 42, 43],
        "rows": [2, 0],
        "kv_lens": [1, 8],
        "q_lens": [1, 3],
        "logits_at": [0, 3],
        "write_rows": [2],
        "write_pos": [0],
        "write_slots": [99],
    }
    for name, want in fields.items():
        got = getattr(step, name)
        assert got.dtype == torch.int64 and got.tolist() == want, name
    assert step.payload().tolist() == [v for want in fields.values() for v in want]
    back = StepBatch.unpack(step.header(), step.payload().clone())
    for name, want in fields.items():
        assert getattr(back, name).tolist() == want, name
    assert back.is_decode is False
    assert step.header().tolist() == [0, 4, 2, 2, 1, 3, 8, 9, 5]  # decode?, T, B, S, W, max q, max kv, kv, prefix
    assert back.header().tolist() == step.header().tolist()  # from the tensors on a TP worker
    assert step.has_placeholders and not step.all_previous
    decode = StepBatch.build([-1, -2, -3], [4, 9, 2], [7, 8, 9], [0, 1, 2], [1, 1, 1], [5, 10, 3], [0, 1, 2])
    assert decode.has_placeholders and decode.all_previous
    assert decode.flat is not None and decode.flat[:15].view(5, 3).tolist() == [
        [-1, -2, -3],
        [4, 9, 2],
        [7, 8, 9],
        [0, 1, 2],
        [5, 10, 3],
    ]
    mixed = StepBatch.build([-2, -1], [4, 9], [7, 8], [0, 1], [1, 1], [5, 10], [0, 1])
    assert mixed.has_placeholders and not mixed.all_previous
    assert not StepBatch.build([3], [0], [1], [0], [1], [1], [0]).has_placeholders
    empty = StepBatch.build([], [], [], [], [], [], [])
    assert empty.tokens.shape == (0,) and empty.write_rows.shape == (0,)


def test_async_engine_batched_delivery_keeps_each_stream_in_order() -> None:
    if not (DEMO / "config.json").is_file():
        pytest.skip("demo model not prepared: python tools/prepare_demo_model.py")
    from minisgl_decl.engine import LLM, EngineConfig, start_engine
    from minisgl_decl.engine.loader import load_engine_model

    config = EngineConfig(model=DEMO, max_kv_tokens=2048, overlap=True)
    loaded = load_engine_model(config, progress=False)
    tok = loaded.tokenizer
    prompts = [tok.encode(p) for p in ("The capital of France is", "1, 2, 3,", "Once upon a time", "def f(x):")]
    params = [SamplingParams(max_tokens=n, temperature=0.0) for n in (9, 4, 12, 7)]
    offline = LLM(config, loaded=loaded).generate(prompts, params)
    client = start_engine(config, loaded=loaded)

    async def one(i: int) -> tuple[list[int], str, int]:
        ids: list[int] = []
        text = ""
        deltas = 0
        async for out in client.generate(f"q{i}", prompts[i], params[i]):
            ids += out.token_ids
            text += out.text
            deltas += 1
            assert out.completion_tokens == len(ids)
        return ids, text, deltas

    async def run() -> list[tuple[list[int], str, int]]:
        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))

    async def late_reader() -> list[RequestOutput]:
        """Read one delta, then only after the engine finished the request: the rest comes as one delta."""
        stream = client.generate("late", prompts[2], params[2])
        deltas = [await anext(aiter(stream))]
        while client.stats().running or client.stats().waiting:  # updated after the step's outputs were handed over
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # run the hand-over callbacks already queued on this loop
        deltas += [out async for out in stream]
        return deltas

    try:
        streamed = asyncio.run(run())
        late = asyncio.run(late_reader())
    finally:
        client.shutdown()
    assert len(late) == 2 and late[-1].finished
    assert [t for d in late for t in d.token_ids] == list(offline[2].token_ids)
    assert "".join(d.text for d in late) == offline[2].text
    assert late[-1].completion_tokens == len(offline[2].token_ids)
    for (ids, text, deltas), want, p in zip(streamed, offline, params, strict=True):
        assert ids == list(want.token_ids) and text == want.text
        assert 1 <= deltas <= len(ids) <= p.max_tokens  # merged when the reader lags, never lost


class _CpuReplay:
    """`replay()` of a captured graph, on the CPU: the model run eagerly over the graph's own input buffers."""

    def __init__(self, graphs: Any, bs: int, out: torch.Tensor) -> None:
        self.graphs, self.bs, self.out = graphs, bs, out

    def replay(self) -> None:
        tokens, batch = self.graphs._batch(self.bs)
        self.out.copy_(self.graphs.model(tokens, batch))


def cpu_decode_graphs(runner: Any, sizes: list[int], vocab: int) -> Any:
    """The real `DecodeGraphs` with the CUDA parts replaced (the host-step tool's stand-in); replay runs eagerly."""
    from bench_host_step import host_decode_graphs

    def eager(graphs: Any, bs: int) -> tuple[_CpuReplay, torch.Tensor]:
        out = torch.zeros(bs, vocab)
        return _CpuReplay(graphs, bs, out), out

    return host_decode_graphs(runner, sizes, eager)


def test_graph_decode_path_with_overlap_gives_transformers_greedy_tokens() -> None:
    """The CUDA-graph decode path's host side (one-copy inputs, `prev[:b]` copy in the steady state,
    the general placeholder resolution when the batch shrinks, padding) on the CPU, against transformers."""
    if not (DEMO / "config.json").is_file():
        pytest.skip("demo model not prepared: python tools/prepare_demo_model.py")
    from minisgl_decl.engine import LLM, EngineConfig
    from minisgl_decl.engine.loader import load_engine_model
    from minisgl_decl.parity.hf_reference import load_reference

    config = EngineConfig(model=DEMO, max_kv_tokens=2048, overlap=True, max_running=4)
    loaded = load_engine_model(config, progress=False)
    tok = loaded.tokenizer
    prompts = [tok.encode(p) for p in ("The capital of France is", "1, 2, 3,", "Once upon a time", "def f(x):")]
    lengths = (14, 5, 9, 11)  # requests leave at different steps: the batch shrinks, padded sizes replay
    llm = LLM(config, loaded=loaded)
    graphs = cpu_decode_graphs(llm.core.runner, [1, 2, 4], loaded.vocab_size)
    llm.core.runner.graphs = graphs
    seen: list[tuple[int, bool, bool]] = []  # (batch, whole previous batch in order, any placeholder)
    replay = graphs.run

    def counted(step: StepBatch, table: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        seen.append((step.tokens.shape[0], step.all_previous, prev is not None))
        return replay(step, table, prev)

    graphs.run = counted
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    got = [list(o.token_ids) for o in llm.generate(prompts, params)]
    assert {b for b, _, _ in seen} >= {1, 3, 4}  # 3 replays the padded size-4 graph
    assert any(whole for _, whole, _ in seen) and any(p and not whole for _, whole, p in seen)
    hf = load_reference(DEMO, "LlamaForCausalLM")
    for p, n, ids in zip(prompts, lengths, got, strict=True):
        with torch.inference_mode():
            want = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert ids == want[0, len(p) :].tolist()
