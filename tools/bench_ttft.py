"""Time to first token under a burst: admission policy (fcfs / shortest-first) and chunk size.

    python tools/bench_ttft.py --simulate                       # the 64-request GPU burst, scheduler only
    python tools/bench_ttft.py --engine --threads 1             # the engine on the CPU, demo model

`--simulate` drives the engine's real `Scheduler` (and slot pool) with no model: N requests
(default 64, input and output lengths uniform in 100..1024, fixed seed) all waiting at step
0, every request that finishes its prompt samples a token per step, as the engine does. It
prints, per policy and chunk size, after how many steps and how many computed tokens (all
requests' prefill and decode tokens of the steps up to and including it) each request gets
its first token: p50 / p99 / max. These are exact counts, no timing. `--step-ms` and
`--token-us` turn them into a projected TTFT (step time = step-ms + token-us x tokens in the
step); the defaults are assumptions for the Llama-3-8B shape on an H200 (16 GB of weights
read per step at ~4 TB/s; ~16 GFLOP a token at ~600 TFLOP/s), not measurements: the GPU
numbers come from `tools/bench_serve.py --shapes llama3-8b --serve-arg=--schedule-policy=...`.

`--engine` measures on this machine: the engine (`LLM.core`) on the demo model, N requests
(default 32, prompts uniform in 16..256 tokens, 4 new tokens, EOS ignored) submitted at once,
TTFT = wall time from the submission to the step that reports the request's first token.
Each (policy, chunk) configuration runs `--repeats` times, interleaved, the same engine
model in the same process, so load on a shared machine hits every configuration alike.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minisgl_decl.engine.api import SamplingParams  # noqa: E402
from minisgl_decl.engine.request import Request  # noqa: E402
from minisgl_decl.engine.scheduler import Scheduler  # noqa: E402
from minisgl_decl.runtime.runner import SlotPool  # noqa: E402


def quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def lengths(n: int, lo: int, hi: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(n)]


@dataclass
class FirstToken:
    step: int  # steps run up to and including the one that sampled it (1-based)
    tokens: int  # tokens computed by those steps (every request's)
    projected_ms: float


def simulate(
    shapes: list[tuple[int, int]], policy: str, chunk: int, max_running: int, step_ms: float, token_us: float
) -> list[FirstToken]:
    """First token of each request when all arrive at once (the engine's scheduler, no model)."""
    sched = Scheduler(SlotPool(sum(i + o for i, o in shapes) + 1), None, max_running, chunk, policy)  # type: ignore[arg-type]
    reqs = []
    for k, (n_in, n_out) in enumerate(shapes):
        r = Request(k, str(k), [1] * n_in, SamplingParams(max_tokens=n_out, ignore_eos=True), None)
        reqs.append(r)
        sched.waiting.append(r)
    first: dict[int, FirstToken] = {}
    step = tokens = 0
    clock = 0.0
    while sched.waiting or sched.running:
        plan = sched.schedule()
        step += 1
        n = sum(len(it.slots) for it in plan.items)
        tokens += n
        clock += step_ms + token_us * n / 1000
        for it in plan.items:
            r = it.req
            if r.pending == 0:  # its last known token ran: it samples one
                r.output.append(1)
                first.setdefault(r.key, FirstToken(step, tokens, clock))
                if r.final:
                    sched.remove(r)
    return [first[r.key] for r in reqs]


def run_simulation(args: argparse.Namespace) -> None:
    shapes = lengths(args.requests, args.min_len, args.max_len, args.seed)
    total = sum(i for i, _ in shapes)
    print(
        f"scheduler simulation: {args.requests} requests at once, input/output uniform "
        f"{args.min_len}..{args.max_len} (seed {args.seed}; {total} prompt tokens), max_running {args.max_running}; "
        f"projection: {args.step_ms} ms + {args.token_us} us/token per step (assumed, not measured)"
    )
    print(
        "| policy | chunk | steps to 1st token p50 / p99 / max | tokens computed before it p50 / p99 | "
        "projected TTFT p50 / p99 (ms) |"
    )
    print("|---|---|---|---|---|")
    for chunk in args.chunks:
        for policy in args.policies:
            ft = simulate(shapes, policy, chunk, args.max_running, args.step_ms, args.token_us)
            st = [float(f.step) for f in ft]
            tk = [float(f.tokens) for f in ft]
            ms = [f.projected_ms for f in ft]
            print(
                f"| {policy} | {chunk} | {quantile(st, 0.5):.0f} / {quantile(st, 0.99):.0f} / {max(st):.0f} | "
                f"{quantile(tk, 0.5):,.0f} / {quantile(tk, 0.99):,.0f} | "
                f"{quantile(ms, 0.5):.0f} / {quantile(ms, 0.99):.0f} |"
            )


def run_engine(args: argparse.Namespace) -> None:
    import torch

    from minisgl_decl.engine import LLM, EngineConfig
    from minisgl_decl.engine.loader import load_engine_model
    from minisgl_decl.parity.run import quiet_transformers

    quiet_transformers()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_engine_model(EngineConfig(model=args.model), progress=False)
    rng = random.Random(args.seed)
    vocab = loaded.vocab_size
    prompts = [
        [rng.randrange(1000, vocab) for _ in range(rng.randint(args.min_len, args.max_len))]
        for _ in range(args.requests)
    ]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    configs = [(p, c) for c in args.chunks for p in args.policies]
    results: dict[tuple[str, int], list[list[float]]] = {cfg: [] for cfg in configs}
    for _ in range(args.repeats):
        for policy, chunk in configs:
            config = EngineConfig(
                model=args.model,
                schedule_policy=policy,  # type: ignore[arg-type]
                chunked_prefill_size=chunk,
                max_running=args.requests,
                prefix_cache=False,  # every repeat computes the same prompts again
            )
            core = LLM(config, loaded=loaded).core
            t0 = time.perf_counter()
            for i, p in enumerate(prompts):
                core.add_request(str(i), p, params)
            ttft: dict[str, float] = {}
            while core.has_work():
                for o in core.step():
                    ttft.setdefault(o.request_id, time.perf_counter() - t0)
            results[(policy, chunk)].append(list(ttft.values()))
    print(
        f"engine on {args.model.name}, {platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M')}: {args.requests} requests at once, "
        f"prompts uniform {args.min_len}..{args.max_len} (seed {args.seed}), {args.new_tokens} new tokens; "
        f"{args.repeats} interleaved repeats (median of each statistic over them)"
    )
    print("| policy | chunk | TTFT p50 (s) | TTFT p99 (s) | TTFT mean (s) | all first tokens (s) |")
    print("|---|---|---|---|---|---|")
    for policy, chunk in configs:
        runs = results[(policy, chunk)]
        med = [
            statistics.median(f(r) for r in runs)
            for f in (lambda r: quantile(r, 0.5), lambda r: quantile(r, 0.99), statistics.mean, max)
        ]
        print(f"| {policy} | {chunk} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", action="store_true", help="the scheduler alone (exact step / token counts)")
    mode.add_argument("--engine", action="store_true", help="the engine on this machine's CPU (timed)")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=None, help="requests at once (64 simulated, 32 engine)")
    ap.add_argument("--min-len", type=int, default=None, help="shortest prompt (100 simulated, 16 engine)")
    ap.add_argument("--max-len", type=int, default=None, help="longest prompt (1024 simulated, 256 engine)")
    ap.add_argument("--new-tokens", type=int, default=4, help="engine: tokens generated per request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", nargs="+", default=["fcfs", "shortest-first"])
    ap.add_argument("--chunks", type=int, nargs="+", default=None, help="prefill chunk sizes")
    ap.add_argument("--max-running", type=int, default=64, help="simulate: most running requests")
    ap.add_argument("--step-ms", type=float, default=4.0, help="simulate: assumed fixed cost of a step")
    ap.add_argument("--token-us", type=float, default=27.0, help="simulate: assumed cost of a token in a step")
    ap.add_argument("--repeats", type=int, default=3, help="engine: interleaved repeats")
    ap.add_argument("--threads", type=int, default=None, help="engine: torch threads")
    args = ap.parse_args()
    sim = bool(args.simulate)
    args.requests = args.requests or (64 if sim else 32)
    args.min_len = args.min_len or (100 if sim else 16)
    args.max_len = args.max_len or (1024 if sim else 256)
    args.chunks = args.chunks or ([512, 1024, 2048, 4096, 8192] if sim else [64, 256])
    if sim:
        run_simulation(args)
    else:
        run_engine(args)


if __name__ == "__main__":
    main()
