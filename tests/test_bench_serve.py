"""tools/bench_serve.py: the pure parts (percentiles, length distributions, exact prompts, arrivals,
argument checks) and the SSE timing of the load generator against a mock transport. Fast: no model runs."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _helpers import DEMO, ROOT

sys.path.insert(0, str(ROOT / "tools"))

from bench_client import RequestResult, request_body, run_load
from bench_serve import parse_args, server_metrics
from bench_workload import (
    BenchArgError,
    BenchRequest,
    LengthDist,
    arrival_offsets,
    make_workload,
    ordinary_token_ids,
    percentile,
    summary,
)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    if not (DEMO / "tokenizer.json").is_file():
        pytest.skip(f"demo tokenizer missing: run `python tools/prepare_demo_model.py` (looked in {DEMO})")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO)


# ---- percentiles ----


def test_percentile_hand_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    assert percentile([5.0, 1.0, 3.0], 0) == 1.0
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0
    assert percentile(list(range(101)), 90) == 90.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("q", [0, 1, 37.5, 50, 90, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        xs = [rng.uniform(-5, 50) for _ in range(n)]
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12, abs=1e-12)


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="percentile q"):
        percentile([1.0], 101)


def test_summary() -> None:
    s = summary([4.0, 1.0, 3.0, 2.0])
    assert s == {"mean": 2.5, "p50": 2.5, "p90": pytest.approx(3.7), "p99": pytest.approx(3.97)}
    assert all(math.isnan(v) for v in summary([]).values())


# ---- length distributions ----


def test_length_parse() -> None:
    assert LengthDist.parse("128", "--input-len") == LengthDist(128, 128)
    assert LengthDist.parse("100:1024", "--input-len") == LengthDist(100, 1024)
    assert str(LengthDist(7, 9)) == "7:9 (uniform)"


@pytest.mark.parametrize("bad", ["0", "-3", "5:3", "abc", "1:2:3", "", "1:", ":4", "1.5"])
def test_length_parse_rejects(bad: str) -> None:
    with pytest.raises(BenchArgError, match="--output-len"):
        LengthDist.parse(bad, "--output-len")


def test_length_sample_uniform_range() -> None:
    rng = random.Random(0)
    draws = [LengthDist(3, 6).sample(rng) for _ in range(2000)]
    assert set(draws) == {3, 4, 5, 6}
    assert all(300 < draws.count(v) < 700 for v in range(3, 7))  # about 500 each
    assert {LengthDist(9, 9).sample(rng) for _ in range(20)} == {9}


# ---- workload ----


def test_workload_exact_lengths_and_ordinary_ids(tokenizer) -> None:  # type: ignore[no-untyped-def]
    reqs = make_workload(tokenizer, 40, LengthDist(1, 300), LengthDist(2, 5), seed=11)
    assert len(reqs) == 40
    special = set(tokenizer.all_special_ids)
    assert len({len(r.prompt_ids) for r in reqs}) > 10
    for r in reqs:
        assert 1 <= len(r.prompt_ids) <= 300 and 2 <= r.output_len <= 5
        assert all(0 <= t < len(tokenizer) and t not in special for t in r.prompt_ids)
    fixed = make_workload(tokenizer, 3, LengthDist(128, 128), LengthDist(64, 64), seed=0)
    assert [(len(r.prompt_ids), r.output_len) for r in fixed] == [(128, 64)] * 3


def test_workload_seeded(tokenizer) -> None:  # type: ignore[no-untyped-def]
    a = make_workload(tokenizer, 5, LengthDist(10, 50), LengthDist(1, 8), seed=7)
    assert a == make_workload(tokenizer, 5, LengthDist(10, 50), LengthDist(1, 8), seed=7)
    assert a != make_workload(tokenizer, 5, LengthDist(10, 50), LengthDist(1, 8), seed=8)
    assert len({r.prompt_ids for r in a}) == 5  # distinct prompts (no accidental prefix-cache hits)


def test_ordinary_ids_exclude_special_and_added(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = set(ordinary_token_ids(tokenizer))
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.eos_token_id not in ids and im_start not in ids
    assert len(ids) > 40_000


def test_request_body_forces_length() -> None:
    body = request_body("m", BenchRequest((5, 6, 7), 9))
    assert body["prompt"] == [5, 6, 7] and body["max_tokens"] == 9 and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.0


# ---- arrivals ----


def test_arrivals_inf_all_at_once() -> None:
    assert arrival_offsets(4, math.inf, 0) == [0.0] * 4


def test_arrivals_poisson() -> None:
    xs = arrival_offsets(4000, 8.0, seed=1)
    assert xs[0] == 0.0 and xs == sorted(xs)
    gaps = np.diff(xs)
    assert 0.9 / 8 < gaps.mean() < 1.1 / 8
    assert 0.9 / 8 < gaps.std() < 1.1 / 8  # exponential: std == mean
    assert xs == arrival_offsets(4000, 8.0, seed=1)
    with pytest.raises(BenchArgError, match="request-rate"):
        arrival_offsets(3, 0.0, 0)


# ---- argument parsing ----


def test_args_url_mode() -> None:
    a = parse_args(
        [
            "--url",
            "http://127.0.0.1:8000/v1/",
            "--model-dir",
            "m",
            "--num-requests",
            "8",
            "--input-len",
            "100:1024",
            "--request-rate",
            "2.5",
        ]
    )
    assert a.url == "http://127.0.0.1:8000"
    assert a.concurrency == 8 and a.baseline_batch == 8 and a.request_rate == 2.5
    assert a.input_dist == LengthDist(100, 1024) and a.output_dist == LengthDist(64, 64)
    assert parse_args(["--url", "http://localhost:1", "--model-dir", "m", "--concurrency", "3"]).baseline_batch == 3


def test_args_start_server_takes_the_rest(tmp_path: Path) -> None:
    a = parse_args(
        [
            "--num-requests",
            "2",
            "--start-server",
            "--model",
            str(tmp_path),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--max-kv-tokens",
            "4096",
        ]
    )
    assert a.start_server == [
        "--model",
        str(tmp_path),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--max-kv-tokens",
        "4096",
    ]
    assert a.model_dir == tmp_path and a.serve.dtype == "float32" and a.serve.max_kv_tokens == 4096


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://10.0.0.1:8000", "--model-dir", "m"], "must point at this machine"),
        (["--url", "http://example.com", "--model-dir", "m"], "must point at this machine"),
        (["--url", "http://127.0.0.1:8000"], "needs --model-dir"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--num-requests", "0"], "--num-requests"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--num-requests", "100000"], "--num-requests"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--concurrency", "0"], "--concurrency"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--request-rate", "0"], "--request-rate"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--input-len", "9:2"], "--input-len"),
        (["--url", "http://127.0.0.1:1", "--model-dir", "m", "--threads", "0"], "--threads"),
        (["--start-server", "--model", "m", "--port", "9000"], "picks --host 127.0.0.1 and a free --port"),
        (["--start-server"], "give serve a local --model DIR"),
    ],
)
def test_args_rejected(argv: list[str], message: str) -> None:
    with pytest.raises(BenchArgError, match=message):
        parse_args(argv)


def test_url_and_start_server_are_exclusive() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--url", "http://127.0.0.1:1", "--model-dir", "m", "--start-server", "--model", "m"])


# ---- load generator over a mock transport ----

GAP_S = 0.05


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _server(texts: list[str], completion_tokens: int, status: int = 200) -> httpx.MockTransport:
    async def body() -> AsyncIterator[bytes]:
        for t in texts:
            await asyncio.sleep(GAP_S)
            yield _sse({"choices": [{"index": 0, "text": t, "finish_reason": None}], "usage": None})
        yield _sse({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": completion_tokens}})
        yield b"data: [DONE]\n\n"

    seen: list[dict[str, object]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "bad max_tokens", "type": "x"}})
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    transport = httpx.MockTransport(handler)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


def test_load_times_text_chunks() -> None:
    # 4 text chunks, one empty chunk (a held-back partial character) that must not count as a token arrival
    transport = _server(["a", "", "b", "c", "d"], completion_tokens=4)
    reqs = [BenchRequest((1, 2, 3), 4), BenchRequest((4, 5, 6), 4)]
    results, wall = asyncio.run(run_load("http://127.0.0.1:1", "m", reqs, [0.0, 0.0], 2, transport))
    assert [r.ok for r in results] == [True, True], [r.error for r in results]
    for r in results:
        assert r.completion_tokens == 4 and len(r.itl) == 3
        assert r.ttft >= GAP_S and all(g >= GAP_S for g in r.itl[1:]) and r.itl[0] >= 2 * GAP_S
        assert r.e2e >= r.ttft + sum(r.itl)
    assert wall >= 5 * GAP_S
    assert [s["prompt"] for s in transport.seen] == [[1, 2, 3], [4, 5, 6]]  # type: ignore[attr-defined]


def test_load_counts_wrong_length_and_http_errors() -> None:
    short, _ = asyncio.run(
        run_load("http://127.0.0.1:1", "m", [BenchRequest((1,), 5)], [0.0], 1, _server(["a", "b"], completion_tokens=2))
    )
    assert not short[0].ok and "asked for 5 output tokens, the server reported 2" in short[0].error
    bad, _ = asyncio.run(
        run_load("http://127.0.0.1:1", "m", [BenchRequest((1,), 5)], [0.0], 1, _server([], 0, status=400))
    )
    assert not bad[0].ok and bad[0].error.startswith("HTTP 400") and "bad max_tokens" in bad[0].error


def test_load_honours_arrival_offsets() -> None:
    transport = _server(["a"], completion_tokens=1)
    reqs = [BenchRequest((1,), 1)] * 2
    results, wall = asyncio.run(run_load("http://127.0.0.1:1", "m", reqs, [0.0, 0.3], 2, transport))
    assert all(r.ok for r in results) and wall >= 0.3 + GAP_S


def test_server_metrics_counts_only_completed() -> None:
    ok = RequestResult(10, 4, ok=True, completion_tokens=4, ttft=0.1, e2e=0.4, itl=[0.1, 0.1, 0.1])
    ok2 = RequestResult(20, 2, ok=True, completion_tokens=2, ttft=0.3, e2e=0.5, itl=[0.2])
    failed = RequestResult(5, 4, error="HTTP 400: nope")
    m = server_metrics([ok, ok2, failed], wall=2.0)
    assert m["completed"] == 2 and m["failed"] == 1 and m["errors"] == ["HTTP 400: nope"]
    assert m["request_throughput"] == 1.0 and m["output_tok_s"] == 3.0 and m["total_tok_s"] == 18.0
    assert m["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert m["tpot_ms"]["mean"] == pytest.approx(150.0)  # (0.4-0.1)/3 and (0.5-0.3)/1
    assert m["itl_ms"]["p50"] == pytest.approx(100.0)
