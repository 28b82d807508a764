"""The baseline half of `tools/bench_serve.py`: transformers `generate` on the same prompts and lengths.

Greedy, `min_new_tokens = max_new_tokens` so every request produces exactly its output
length, same model directory, dtype and device as the server. Two runs:

- batch 1: the requests one after another;
- batched: the requests in groups of `batch_size`, left-padded with an attention mask. A
  group generates up to its longest output length; only each request's own length counts
  as output (the extra tokens are the cost of static batching).

One short warm-up `generate` runs first. Throughput = counted output tokens / wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_workload import BenchRequest


@dataclass(frozen=True)
class BaselineResult:
    name: str
    requests: int
    output_tokens: int
    seconds: float

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.seconds

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds


def _load(model_dir: Path, dtype: torch.dtype, device: str) -> tuple[torch.nn.Module, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return model, int(pad)


def _generate(model: torch.nn.Module, reqs: list[BenchRequest], pad_id: int, device: str) -> None:
    width = max(len(r.prompt_ids) for r in reqs)
    ids = torch.full((len(reqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(reqs), width), dtype=torch.long)
    for i, r in enumerate(reqs):
        ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        mask[i, width - len(r.prompt_ids) :] = 1
    n = max(r.output_len for r in reqs)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=n,  # type: ignore[operator]
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    if out.shape[1] != width + n:
        raise RuntimeError(f"transformers generated {out.shape[1] - width} tokens, asked for {n}")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_baseline(
    model_dir: Path, dtype: torch.dtype, device: str, requests: list[BenchRequest], batch_size: int
) -> list[BaselineResult]:
    model, pad_id = _load(model_dir, dtype, device)
    total = sum(r.output_len for r in requests)
    results = []
    with torch.inference_mode():
        _generate(model, [BenchRequest(requests[0].prompt_ids, 4)], pad_id, device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for r in requests:
            _generate(model, [r], pad_id, device)
        _sync(device)
        results.append(BaselineResult("transformers batch 1", len(requests), total, time.perf_counter() - t0))
        if batch_size > 1:
            t0 = time.perf_counter()
            for i in range(0, len(requests), batch_size):
                _generate(model, requests[i : i + batch_size], pad_id, device)
            _sync(device)
            results.append(
                BaselineResult(f"transformers batched {batch_size}", len(requests), total, time.perf_counter() - t0)
            )
    return results
