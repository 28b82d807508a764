"""Wall time of one engine decode step (`EngineCore.step()`) on the demo model, no profiler.

Adds `--batch` requests (fixed-seed token-id prompts of `--input-len`, greedy, EOS ignored),
steps until every prompt is prefilled, then times `--steps` decode steps one by one and
prints the median and p10/p90 in ms. For a before/after comparison run it from two
checkouts alternately (e.g. `git archive BASE | tar -x -C /tmp/base`), same threads:

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tools/bench_decode_step.py --batch 1 --steps 24
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=24)
    a = p.parse_args()
    llm = LLM(EngineConfig(model=a.model, device="cpu", dtype="float32"))
    core = llm.core
    rng = random.Random(0)
    vocab = llm.loaded.vocab_size
    params = SamplingParams(max_tokens=a.steps + 8, temperature=0.0, ignore_eos=True)
    for i in range(a.batch):
        core.add_request(f"p{i}", [rng.randrange(1000, vocab) for _ in range(a.input_len)], params)
    for _ in range(-(-a.input_len * a.batch // 256) + 3):  # prefill chunks, then warm decode steps
        core.step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        core.step()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10)
    print(
        f"batch {a.batch}, threads {torch.get_num_threads()}: decode step median {statistics.median(times):.1f} ms "
        f"(p10 {q[0]:.1f}, p90 {q[-1]:.1f}; {a.steps} steps) = {a.batch * 1e3 / statistics.median(times):.1f} tok/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
