"""Profile engine decode steps: where the time of one `EngineCore.step()` goes at a given batch size.

Adds `--batch` requests (random token-id prompts of `--input-len`, greedy, `--output-len`
forced with ignore_eos) to the offline engine, steps until every prompt is prefilled, then
runs `--steps` decode steps under cProfile (Python functions) and torch.profiler (ops),
printing the mean step time and the top of both profiles.

    python tools/profile_engine_step.py --model models/smollm2-135m-instruct --batch 1 --steps 16
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(EngineConfig(model=args.model, device="cpu", dtype="float32"))
    core = llm.core
    rng = random.Random(0)
    vocab = llm.loaded.vocab_size
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    for i in range(args.batch):
        core.add_request(f"p{i}", [rng.randrange(1000, vocab) for _ in range(args.input_len)], params)
    for _ in range(max(2, -(-args.input_len * args.batch // 256) + 2)):  # prefill chunks + warm decode steps
        core.step()
    steps = min(args.steps, args.output_len - 4)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(steps):
        core.step()
    prof.disable()
    wall = (time.perf_counter() - t0) / steps
    print(
        f"batch {args.batch}, threads {torch.get_num_threads()}: {wall * 1000:.1f} ms per decode step "
        f"({args.batch / wall:.1f} output tok/s), {steps} steps under cProfile"
    )
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        for _ in range(min(4, args.output_len - steps - 4)):
            core.step()
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
