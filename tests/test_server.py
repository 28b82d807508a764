"""`minisgl-decl serve` on the real demo model, through the official `openai` client and raw HTTP.

One server for the module, started without `--model`: `$MINISGL_DECL_CACHE` points at a
cache holding the demo model, so the embedded-default path is what runs (minus the
download). It requires an API key. The last test sends SIGTERM and checks exit code 0.
Greedy (temperature 0) wherever outputs are compared.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_proc import ServerProcess, demo_model

KEY = "test-key-123"
MAX_MODEL_LEN = 512
PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "One, two, three,",
    "The opposite of hot is",
    "My favourite colour is",
    "In 1492, Columbus",
    "The largest planet is",
    "Bread is made from",
    "A haiku about rain:",
    "Cats and dogs are",
    "The sun rises in the",
    "To make tea, first",
    "Python is a programming",
    "The moon orbits the",
    "Snow is usually",
    "A square has four",
]
LONG = (
    "The history of the printing press begins in the fifteenth century, when movable type changed how "
    "books were made and how knowledge travelled across Europe. "
) * 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    demo = demo_model()
    cache = tmp_path_factory.mktemp("cache")
    (cache / "smollm2-135m-instruct").symlink_to(demo.resolve(), target_is_directory=True)
    proc = ServerProcess(
        ["--api-key", KEY, "--max-model-len", str(MAX_MODEL_LEN), "--max-kv-tokens", "4096"],
        env={"MINISGL_DECL_CACHE": str(cache)},
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def _post(server: ServerProcess, path: str, body: Any, key: str | None = KEY, raw: bool = False) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = body if raw else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=300)


def _metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _greedy(client: openai.OpenAI, prompt: str, max_tokens: int = 8) -> str:
    r = client.completions.create(model="smollm2-135m-instruct", prompt=prompt, max_tokens=max_tokens, temperature=0)
    return r.choices[0].text


def test_banner_models_health(server: ServerProcess, client: openai.OpenAI) -> None:
    out = server.output()
    assert "curl " in out and "from openai import OpenAI" in out, out
    assert server.model == "smollm2-135m-instruct"  # the embedded default's name
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_completion_and_chat(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length" and r.choices[0].text.strip()
    assert r.usage is not None and r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == 5  # The / capital / of / France / is: no BOS for this tokenizer
    c = client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert c.object == "chat.completion" and c.choices[0].message.role == "assistant"
    assert "Paris" in (c.choices[0].message.content or ""), c.choices[0].message.content
    assert c.usage is not None and c.usage.prompt_tokens > 10  # the chat template was applied


def test_token_id_prompts_and_prompt_lists(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model()))
    texts = ["Water boils at", "The capital of France is"]
    expected = [_greedy(client, t) for t in texts]
    ids = [tok(t)["input_ids"] for t in texts]
    by_ids = client.completions.create(model="smollm2-135m-instruct", prompt=ids[0], max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == expected[0]
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids[0])
    for prompt in (texts, ids):
        r = client.completions.create(model="smollm2-135m-instruct", prompt=prompt, max_tokens=8, temperature=0)
        assert [c.index for c in r.choices] == [0, 1]
        assert [c.text for c in r.choices] == expected
        assert r.usage is not None and r.usage.prompt_tokens == sum(len(i) for i in ids)


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    full = _greedy(client, "Once upon a time", 12)
    chunks = list(
        client.completions.create(
            model="smollm2-135m-instruct", prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    messages = [{"role": "user", "content": "Name three fruits."}]
    chat = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=messages, max_tokens=12, temperature=0
    )
    streamed = list(
        client.chat.completions.create(
            model="smollm2-135m-instruct", messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == chat.choices[0].message.content


def test_stream_ends_with_done_and_usage(server: ServerProcess) -> None:
    body = {
        "prompt": "Count: 1, 2, 3,",
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, timeout=300, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_n_choices(client: openai.OpenAI) -> None:
    greedy = client.completions.create(
        model="smollm2-135m-instruct", prompt="The sky is", max_tokens=8, temperature=0, n=2
    )
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].text == greedy.choices[1].text == _greedy(client, "The sky is")
    assert greedy.usage is not None and greedy.usage.completion_tokens == 16
    sampled = client.chat.completions.create(
        model="smollm2-135m-instruct",
        n=2,
        max_tokens=8,
        temperature=1.0,
        seed=7,
        messages=[{"role": "user", "content": "Tell me a word."}],
    )
    assert sorted(c.index for c in sampled.choices) == [0, 1]
    again = client.chat.completions.create(
        model="smollm2-135m-instruct",
        n=2,
        max_tokens=8,
        temperature=1.0,
        seed=7,
        messages=[{"role": "user", "content": "Tell me a word."}],
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]


def test_stop_strings(client: openai.OpenAI) -> None:
    full = _greedy(client, "One, two, three,", 16)
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = full[: full.index(stop)]
    for stream in (False, True):
        r = client.completions.create(
            model="smollm2-135m-instruct",
            prompt="One, two, three,",
            max_tokens=16,
            temperature=0,
            stop=[stop, "never-appears-xyz"],
            stream=stream,
        )
        if stream:
            chunks = list(r)
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        else:
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert text == cut, (text, cut, stop)
        assert reason == "stop"


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(
            model="smollm2-135m-instruct",
            prompt="My favourite animal is",
            max_tokens=12,
            temperature=1.2,
            top_p=0.95,
            seed=seed,
        )
        return r.choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))  # 12 tokens at temperature 1.2: different seeds differ


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="smollm2-135m-instruct", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=3
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None and lp.top_logprobs is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    for chosen, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(value, abs=1e-4)  # greedy: the chosen token is the most likely
        assert top[chosen] == pytest.approx(value, abs=1e-4)
    c = client.chat.completions.create(
        model="smollm2-135m-instruct",
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        messages=[{"role": "user", "content": "Hi!"}],
    )
    content = c.choices[0].logprobs.content if c.choices[0].logprobs else None
    assert content is not None and len(content) == 4
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    assert "".join(t.token for t in content) == c.choices[0].message.content


def test_cached_tokens_on_repeated_prompt(client: openai.OpenAI) -> None:
    first = client.completions.create(model="smollm2-135m-instruct", prompt=LONG, max_tokens=2, temperature=0)
    second = client.completions.create(model="smollm2-135m-instruct", prompt=LONG, max_tokens=2, temperature=0)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens > 200
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= first.usage.prompt_tokens // 2, details
    assert second.choices[0].text == first.choices[0].text


def test_concurrent_streams_equal_one_by_one(server: ServerProcess, client: openai.OpenAI) -> None:
    alone = [_greedy(client, p, 6) for p in PROMPTS]

    async def together() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)

        async def one(p: str) -> str:
            stream = await aclient.completions.create(
                model="smollm2-135m-instruct", prompt=p, max_tokens=6, temperature=0, stream=True
            )
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return list(await asyncio.gather(*(one(p) for p in PROMPTS)))
        finally:
            await aclient.close()

    assert asyncio.run(together()) == alone


def _busy(server: ServerProcess) -> float:
    m = _metrics(server)
    return (
        m[("minisgl_kv_tokens_used", ())]
        - m[("minisgl_kv_tokens_evictable", ())]
        + m[("minisgl_requests_running", ())]
        + m[("minisgl_requests_waiting", ())]
    )


def test_disconnect_aborts_and_frees_kv(server: ServerProcess, client: openai.OpenAI) -> None:
    others = PROMPTS[:2]
    expected = [_greedy(client, p, 16) for p in others]
    aborted_before = _metrics(server).get(("minisgl_requests_aborted_total", ()), 0.0)
    results: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client.completions.create(
            model="smollm2-135m-instruct", prompt=others[i], max_tokens=16, temperature=0, stream=True
        )
        results[i] = "".join(c.choices[0].text for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(others))]
    for t in threads:
        t.start()
    body = {"prompt": "Once upon a time, in a land far away,", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, timeout=300, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        chunks = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(json.loads(line.removeprefix("data: ")))
            if len(chunks) >= 2:
                break  # leaving the block closes the connection mid-stream
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)  # it was still running
    for t in threads:
        t.join(timeout=300)
    assert [results.get(i) for i in range(len(others))] == expected  # the other streams are unaffected
    deadline = time.monotonic() + 60
    while _busy(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    m = _metrics(server)
    assert m[("minisgl_requests_aborted_total", ())] == aborted_before + 1
    assert m[("minisgl_kv_tokens_used", ())] - m[("minisgl_kv_tokens_evictable", ())] == 0, m
    assert m[("minisgl_requests_running", ())] == 0 and m[("minisgl_requests_waiting", ())] == 0


def test_disconnect_while_waiting_for_a_non_streamed_reply(server: ServerProcess) -> None:
    aborted_before = _metrics(server).get(("minisgl_requests_aborted_total", ()), 0.0)
    body = {"prompt": "Once upon a time, in a land far away,", "max_tokens": 400, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(
            f"{server.url}/v1/completions",
            json=body,
            timeout=httpx.Timeout(300, read=2.0),
            headers={"Authorization": f"Bearer {KEY}"},
        )
    deadline = time.monotonic() + 60
    while _busy(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    m = _metrics(server)
    assert m[("minisgl_requests_aborted_total", ())] == aborted_before + 1
    assert m[("minisgl_kv_tokens_used", ())] - m[("minisgl_kv_tokens_evictable", ())] == 0, m


BAD_COMPLETIONS: list[tuple[str, Any, int, str | None]] = [
    ("malformed JSON", '{"prompt": "hi", ', 400, None),
    ("body not an object", "[1, 2]", 400, None),
    ("empty body", "", 400, None),
    ("lone surrogate in the prompt", '{"prompt": "hi \\ud800"}', 400, "prompt"),
    ("NaN temperature", '{"prompt": "hi", "temperature": NaN}', 400, "temperature"),
    ("infinite top_p", '{"prompt": "hi", "top_p": Infinity}', 400, "top_p"),
    ("wrong type: max_tokens", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ("wrong type: prompt", {"prompt": {"text": "hi"}}, 400, "prompt"),
    ("wrong type: stop", {"prompt": "hi", "stop": 5}, 400, "stop"),
    ("wrong type: temperature", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("missing prompt", {"max_tokens": 4}, 400, "prompt"),
    ("unknown model", {"prompt": "hi", "model": "gpt-17"}, 404, "model"),
    ("max_tokens 0", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", {"prompt": "hi", "max_tokens": -3}, 400, "max_tokens"),
    ("max_tokens beyond context", {"prompt": "hi", "max_tokens": MAX_MODEL_LEN + 1}, 400, "max_tokens"),
    ("prompt longer than context", {"prompt": "word " * (MAX_MODEL_LEN + 10), "max_tokens": 1}, 400, "prompt"),
    ("token ids longer than context", {"prompt": [1] * (MAX_MODEL_LEN + 1), "max_tokens": 1}, 400, "prompt"),
    ("token id outside the vocabulary", {"prompt": [1, 10**9]}, 400, "prompt"),
    ("temperature < 0", {"prompt": "hi", "temperature": -0.5}, 400, "temperature"),
    ("top_p 0", {"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("top_p > 1", {"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ("n 0", {"prompt": "hi", "n": 0}, 400, "n"),
    ("too many choices", {"prompt": ["hi"] * 100, "n": 3}, 400, "prompt"),
    ("logprobs > 20", {"prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("empty stop string", {"prompt": "hi", "stop": [""]}, 400, "stop"),
    ("logit_bias key not a token id", {"prompt": "hi", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
]
BAD_CHAT: list[tuple[str, Any, int, str | None]] = [
    ("no messages", {"messages": []}, 400, "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("content wrong type", {"messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content"),
    ("messages wrong type", {"messages": "hello"}, 400, "messages"),
    (
        "max_completion_tokens 0",
        {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0},
        400,
        "max_completion_tokens",
    ),
    (
        "top_logprobs without logprobs",
        {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    (
        "chat prompt longer than context",
        {"messages": [{"role": "user", "content": "word " * MAX_MODEL_LEN}]},
        400,
        "messages",
    ),
]


def _assert_openai_error(r: httpx.Response, status: int, param: str | None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in body["error"]["message"]
    assert body["error"]["param"] == param, body


@pytest.mark.parametrize(("what", "body", "status", "param"), BAD_COMPLETIONS, ids=[c[0] for c in BAD_COMPLETIONS])
def test_bad_completion_input(server: ServerProcess, what: str, body: Any, status: int, param: str | None) -> None:
    r = _post(server, "/v1/completions", body, raw=isinstance(body, str))
    _assert_openai_error(r, status, param)


@pytest.mark.parametrize(("what", "body", "status", "param"), BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_input(server: ServerProcess, what: str, body: Any, status: int, param: str | None) -> None:
    _assert_openai_error(_post(server, "/v1/chat/completions", body), status, param)


def test_body_without_json_content_type(server: ServerProcess) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=b'{"prompt": "hi"}',
        timeout=60,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
    )
    _assert_openai_error(r, 400, None)
    assert "Content-Type: application/json" in r.json()["error"]["message"]


def test_api_key(server: ServerProcess) -> None:
    for key in (None, "wrong-key"):
        r = _post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 1}, key=key)
        _assert_openai_error(r, 401, None)
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_still_serving_after_errors(server: ServerProcess, client: openai.OpenAI) -> None:
    for body, _, _ in [(b[1], b[2], b[3]) for b in BAD_COMPLETIONS[:3]]:
        _post(server, "/v1/completions", body, raw=isinstance(body, str))
    assert _greedy(client, "The capital of France is", 4) == _greedy(client, "The capital of France is", 4)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="smollm2-135m-instruct", prompt="hi", max_tokens=0)
    assert err.value.status_code == 400 and "max_tokens" in str(err.value)


def test_metrics_count(server: ServerProcess, client: openai.OpenAI) -> None:
    before = _metrics(server)
    _greedy(client, "The opposite of hot is", 3)
    _post(server, "/v1/completions", {"prompt": "hi", "top_p": 2})
    after = _metrics(server)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("minisgl_requests_total", (("endpoint", "/v1/completions"), ("status", "200"))) == 1
    assert delta("minisgl_requests_total", (("endpoint", "/v1/completions"), ("status", "400"))) == 1
    assert delta("minisgl_generation_tokens_total") == 3
    assert delta("minisgl_prompt_tokens_total") > 0
    assert delta("minisgl_time_to_first_token_seconds_count") == 1
    assert delta("minisgl_inter_token_latency_seconds_count") == 2
    assert after[("minisgl_kv_tokens_total", ())] == 4096
    assert 0 <= after[("minisgl_prefix_cache_hit_rate", ())] <= 1


def test_zz_sigterm_finishes_in_flight_and_exits_0(server: ServerProcess, client: openai.OpenAI) -> None:
    """Last in the module: SIGTERM while a stream is running; it completes, then the process exits 0."""
    expected = _greedy(client, "The largest planet is", 10)
    result: dict[str, Any] = {}
    started = threading.Event()

    def run() -> None:
        stream = client.completions.create(
            model="smollm2-135m-instruct", prompt="The largest planet is", max_tokens=10, temperature=0, stream=True
        )
        parts, reasons = [], []
        for c in stream:
            started.set()
            if c.choices:
                parts.append(c.choices[0].text)
                reasons.append(c.choices[0].finish_reason)
        result["text"], result["reason"] = "".join(parts), reasons[-1]

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(timeout=120)
    code = server.terminate()
    t.join(timeout=60)
    assert code == 0, server.output()
    assert result == {"text": expected, "reason": "length"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
    assert "Traceback" not in server.output(), server.output()
