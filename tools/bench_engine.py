"""Offline engine throughput against transformers `generate`, measured in the same run.

    python tools/bench_engine.py [--model DIR] [--input-len 64] [--output-len 32] [--concurrency 16]
    python tools/bench_engine.py --sweep-chunk          # how the chunked-prefill default was chosen

Fixed-seed synthetic prompts (token ids), greedy, EOS ignored so every request makes exactly
`--output-len` tokens. Rows:

- transformers batch 1: `generate` on each prompt in turn (the baseline), interleaved with
- engine batch 1: `LLM.generate` on the same prompt (so load changes on a shared machine hit both);
- engine concurrent: all `--concurrency` prompts submitted at once (continuous batching),
  followed by the transformers batch-1 baseline again.

Throughput = output tokens / wall time (prefill included, as a user sees it).
`--sweep-chunk`: for each chunk size, one `--long-len` prompt is prefilled while 4 requests
decode; prints prefill tokens/s and the longest step (what a running decode waits for).
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import torch

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams
from minisgl_decl.parity.run import quiet_transformers

ROOT = Path(__file__).resolve().parent.parent


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, vocab) for _ in range(length)] for _ in range(n)]


def load_hf(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_one(hf: torch.nn.Module, p: list[int], new: int) -> float:
    """Seconds for transformers `generate` on one prompt, exactly `new` tokens."""
    with torch.inference_mode():
        t = time.perf_counter()
        out = hf.generate(
            torch.tensor([p]),
            max_new_tokens=new,
            min_new_tokens=new,  # type: ignore[operator]
            do_sample=False,
            pad_token_id=0,
        )
        seconds = time.perf_counter() - t
    assert out.shape[1] == len(p) + new
    return seconds


def engine_run(llm: LLM, ps: list[list[int]], new: int) -> float:
    """Seconds for the engine on these prompts submitted together, exactly `new` tokens each."""
    params = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    llm.core.flush_cache()  # no prefix-cache help across runs
    t = time.perf_counter()
    outs = llm.generate(ps, params)
    seconds = time.perf_counter() - t
    assert all(o.completion_tokens == new for o in outs)
    return seconds


def sweep_chunk(args: argparse.Namespace, vocab: int) -> None:
    long = prompts(1, args.long_len, vocab, 7)[0]
    short = prompts(4, 16, vocab, 8)
    loaded = None
    print("chunk  prefill tok/s  longest step (ms)  decode-only step (ms)")
    for chunk in args.chunks:
        llm = LLM(EngineConfig(model=args.model, chunked_prefill_size=chunk, prefix_cache=False), loaded=loaded)
        loaded = llm.loaded
        core = llm.core
        for i, p in enumerate(short):
            core.add_request(f"s{i}", p, SamplingParams(max_tokens=10**4 // 4, temperature=0, ignore_eos=True))
        for _ in range(3):
            core.step()  # the short ones are decoding now
        t = time.perf_counter()
        core.step()
        decode_only = time.perf_counter() - t
        core.add_request("long", long, SamplingParams(max_tokens=1, temperature=0))
        steps: list[float] = []
        t0 = time.perf_counter()
        while "long" in core.requests:
            t = time.perf_counter()
            core.step()
            steps.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        print(f"{chunk:5d}  {len(long) / total:13.0f}  {max(steps) * 1e3:17.0f}  {decode_only * 1e3:21.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--batch1-requests", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--sweep-chunk", action="store_true")
    ap.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--long-len", type=int, default=1024)
    args = ap.parse_args()
    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    vocab = 49152
    if args.sweep_chunk:
        sweep_chunk(args, vocab)
        return
    ps = prompts(max(args.concurrency, args.batch1_requests), args.input_len, vocab, 0)
    hf = load_hf(args.model)
    llm = LLM(EngineConfig(model=args.model))
    hf_one(hf, ps[0][:8], 2)  # warm-up both
    engine_run(llm, [ps[0][:8]], 2)
    hf_s = eng_s = 0.0
    for p in ps[: args.batch1_requests]:  # interleaved, so load changes hit both alike
        hf_s += hf_one(hf, p, args.output_len)
        eng_s += engine_run(llm, [p], args.output_len)
    n1 = args.batch1_requests * args.output_len
    base, one = n1 / hf_s, n1 / eng_s
    many = args.concurrency * args.output_len / engine_run(llm, ps[: args.concurrency], args.output_len)
    after = n1 / sum(hf_one(hf, p, args.output_len) for p in ps[: args.batch1_requests])
    print(f"input {args.input_len}, output {args.output_len} tokens, greedy, float32")
    print(f"transformers generate, batch 1:      {base:7.1f} tok/s  (again after the concurrent run: {after:.1f})")
    print(f"engine, batch 1:                     {one:7.1f} tok/s  ({one / base:.2f}x)")
    print(
        f"engine, {args.concurrency:2d} concurrent:               {many:7.1f} tok/s  "
        f"({many / base:.2f}x; {many / after:.2f}x of the second baseline)"
    )


if __name__ == "__main__":
    main()
