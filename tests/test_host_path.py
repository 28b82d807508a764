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
from typing import Any

import pytest
import torch
from _helpers import DEMO

from minisgl_decl.engine.api import RequestOutput, SamplingParams
from minisgl_decl.engine.detokenize import window_decoder
from minisgl_decl.runtime.runner import StepBatch
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
    fields = {
        "tokens": [11, -1, 13, 14],
        "positions": [0, 5, 6, 7],
        "out_slots": [40, 41, 42, 43],
        "rows": [2, 0],
        "q_lens": [1, 3],
        "kv_lens": [1, 8],
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

    try:
        streamed = asyncio.run(run())
    finally:
        client.shutdown()
    for (ids, text, deltas), want, p in zip(streamed, offline, params, strict=True):
        assert ids == list(want.token_ids) and text == want.text
        assert deltas == len(ids) <= p.max_tokens  # one delta per token: nothing merged or lost
