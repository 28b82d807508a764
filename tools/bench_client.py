"""The load-generating half of `tools/bench_serve.py`: streamed `/v1/completions` requests over httpx.

Each request is sent as a token-id prompt with `max_tokens` = its output length,
`ignore_eos` (vLLM-style extra) so the length is forced, greedy (`temperature` 0),
`stream` with `stream_options.include_usage` so the server's own token count comes back.
Every SSE chunk that carries text is time-stamped on arrival: TTFT is the first one, the
inter-token latencies are the gaps between consecutive ones, the end-to-end latency is the
`[DONE]` event. A response whose `completion_tokens` differs from the requested length is
counted as a failure (the length could not be forced).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from bench_workload import BenchRequest

TIMEOUT_S = 600.0


@dataclass
class RequestResult:
    prompt_len: int
    output_len: int  # what was asked for
    ok: bool = False
    error: str = ""
    completion_tokens: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)  # gaps between text-carrying chunks

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first (None for a one-token output)."""
        n = self.completion_tokens
        return (self.e2e - self.ttft) / (n - 1) if n > 1 else None


def request_body(model: str, req: BenchRequest) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": list(req.prompt_ids),
        "max_tokens": req.output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "min_tokens": req.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(client: httpx.AsyncClient, url: str, model: str, req: BenchRequest) -> RequestResult:
    res = RequestResult(len(req.prompt_ids), req.output_len)
    start = time.perf_counter()
    last: float | None = None
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=request_body(model, req)) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                now = time.perf_counter()
                if data == "[DONE]":
                    res.e2e = now - start
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.error = str(chunk["error"].get("message", chunk["error"]))
                    return res
                if chunk.get("usage"):
                    res.completion_tokens = int(chunk["usage"]["completion_tokens"])
                if any(c.get("text") for c in chunk.get("choices", [])):
                    if last is None:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    if last is None or res.e2e == 0.0:
        res.error = "the stream ended without text or without [DONE]"
    elif res.completion_tokens != req.output_len:
        res.error = f"asked for {req.output_len} output tokens, the server reported {res.completion_tokens}"
    else:
        res.ok = True
    return res


async def run_load(
    url: str,
    model: str,
    requests: list[BenchRequest],
    offsets: list[float],
    concurrency: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[RequestResult], float]:
    """Send `requests[i]` at `offsets[i]` seconds (at most `concurrency` in flight); results and wall time.

    `transport` replaces the network (tests pass an `httpx.MockTransport`).
    """
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S), limits=limits, transport=transport) as client:
        start = time.perf_counter()

        async def scheduled(req: BenchRequest, at: float) -> RequestResult:
            delay = start + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with limit:
                return await _one(client, url, model, req)

        results = await asyncio.gather(*(scheduled(r, t) for r, t in zip(requests, offsets, strict=True)))
        return list(results), time.perf_counter() - start


async def served_model(url: str) -> str:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        resp = await client.get(f"{url}/v1/models")
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])


async def wait_healthy(url: str, timeout_s: float, alive: Any) -> bool:
    """Poll GET /health until 200 (True), `alive()` turns False or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
        while time.monotonic() < deadline and alive():
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return False
