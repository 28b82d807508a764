"""Profile engine decode steps: where the time of one `EngineCore.step()` goes at a given batch size.

Adds `--batch` requests (random token-id prompts of `--input-len`, greedy, `--output-len`
forced with ignore_eos) to the offline engine and steps until every prompt is prefilled.

CPU (default): `--steps` decode steps under cProfile (Python functions) and torch.profiler
(ops), printing the mean step time and the top of both profiles.

    python tools/profile_engine_step.py --model models/smollm2-135m-instruct --batch 1 --steps 16

CUDA (`--device cuda`; `--shape NAME` builds a random-weight checkpoint of a real shape with
`tools/bench_shapes.py` instead of `--model`): the engine as `serve` runs it (CUDA graphs and
overlap scheduling at their defaults, or as `--no-overlap` / `--no-cuda-graph` say), then

  * the step time without any instrumentation (median of `--steps` steps);
  * host time per phase of a step (perf_counter around the engine's own calls: schedule,
    batch build, the runner's input copy + request-table write, graph replay launch, sampler
    launch, waiting for the sampled ids, unpacking them, postprocess / detokenise);
  * torch.profiler over `--trace-steps` steps (CPU + CUDA): GPU busy time per step (union
    of kernel and copy intervals), the idle gaps between them, and for each gap of more than
    `--gap-us` which host phase was running when the GPU went idle and when it restarted.

    python tools/profile_engine_step.py --device cuda --shape qwen3-0.6b --steps 200 --json out.json
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import io
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from minisgl_decl.engine import LLM, EngineConfig, SamplingParams  # noqa: E402


def add_requests(llm: LLM, batch: int, input_len: int, output_len: int) -> None:
    core = llm.core
    rng = random.Random(0)
    vocab = llm.loaded.vocab_size
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        core.add_request(f"p{i}", [rng.randrange(min(1000, vocab // 2), vocab) for _ in range(input_len)], params)


def cpu_profile(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = LLM(EngineConfig(model=args.model, device="cpu", dtype="float32"))
    core = llm.core
    add_requests(llm, args.batch, args.input_len, args.output_len)
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


# ---- CUDA: host phases, GPU timeline ----


class Phases:
    """Host seconds per named phase; each phase is also a profiler range (`phase:<name>`)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.on = True

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        if not self.on:
            yield
            return
        with torch.profiler.record_function(f"phase:{name}"):
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self.total[name] += time.perf_counter() - t0
                self.count[name] += 1

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time `owner.attr(...)` as phase `name` (instance attribute shadowing the method)."""
        inner: Callable[..., Any] = getattr(owner, attr)

        def timed(*a: Any, **k: Any) -> Any:
            with self.timed(name):
                return inner(*a, **k)

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.total.clear()
        self.count.clear()


class _TimedGraph:
    """A captured graph whose `replay()` launch is a phase."""

    def __init__(self, graph: Any, phases: Phases) -> None:
        self.graph, self.phases = graph, phases

    def replay(self) -> None:
        with self.phases.timed("graph replay launch"):
            self.graph.replay()


def instrument(llm: LLM, phases: Phases) -> None:
    from minisgl_decl.engine import sampling

    core = llm.core
    phases.wrap(core.sched, "schedule", "schedule")
    phases.wrap(core, "_batch", "batch build (StepBatch)")
    phases.wrap(core.runner, "run", "runner.run (H2D, table write, launch)")
    phases.wrap(core.sampler, "launch", "sampler launch")
    phases.wrap(core, "_postprocess", "postprocess + detokenise")
    if core.comm is not None:
        from minisgl_decl.engine import tp as tp_mod

        for fn in ("send_step", "send_sampled"):
            orig = getattr(tp_mod, fn)

            def timed(*a: Any, _orig: Any = orig, _fn: str = fn, **k: Any) -> Any:
                with phases.timed(f"tp.{_fn}"):
                    return _orig(*a, **k)

            setattr(tp_mod, fn, timed)
    graphs = core.runner.graphs
    if graphs is not None:
        for bs, (g, out) in list(graphs.graphs.items()):
            graphs.graphs[bs] = (_TimedGraph(g, phases), out)  # type: ignore[assignment]
    orig_result = sampling.SampledBatch.result

    def result(self: Any) -> Any:
        with phases.timed("wait for sampled ids (D2H)"):
            if self._done is not None:
                self._done.synchronize()
        with phases.timed("unpack sampled ids"):
            return orig_result(self)

    sampling.SampledBatch.result = result  # type: ignore[method-assign]


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def timeline(trace_file: Path, steps: int, gap_us: float) -> dict[str, Any]:
    """GPU busy time and idle gaps from a chrome trace; host phases at each gap's edges."""
    events = json.loads(trace_file.read_text())["traceEvents"]
    gpu = [
        (e["ts"], e["ts"] + e.get("dur", 0)) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]
    kernels = [e for e in events if e.get("cat") == "kernel"]
    phases = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0), e["name"][len("phase:") :])
        for e in events
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("phase:")
    )
    steps_marks = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in events
        if e.get("cat") == "user_annotation" and e.get("name") == "step"
    )
    if steps_marks:  # only GPU work that starts inside the traced steps (a peer's late start can
        # leave one all-reduce kernel spinning since before the window: it would count as busy)
        lo = steps_marks[0][0]
        gpu = [(a, b) for a, b in gpu if a >= lo]
        kernels = [e for e in kernels if e["ts"] >= lo]
    busy = _union(gpu)
    if not busy:
        return {"error": "no GPU activity in the trace"}
    # the window: from the first step's start to the last step's end (host), clipped to GPU activity
    lo, hi = busy[0][0], busy[-1][1]
    span = hi - lo
    busy_us = sum(b - a for a, b in busy)
    starts = [p[0] for p in phases]

    def phase_at(t: float) -> str:
        """The innermost (latest-starting) host phase running at time t, or 'between phases'."""
        k = bisect.bisect_right(starts, t)
        best = None
        for j in range(k - 1, max(-1, k - 40), -1):
            a, b, name = phases[j]
            if a <= t <= b:
                best = name
                break
        return best or "between phases"

    gaps = [(busy[i][1], busy[i + 1][0]) for i in range(len(busy) - 1) if busy[i + 1][0] - busy[i][1] > gap_us]
    by_edge: dict[str, list[float]] = defaultdict(list)
    for a, b in gaps:
        by_edge[f"idle from [{phase_at(a)}] to [{phase_at(b)}]"].append(b - a)
    small_gaps = sum(busy[i + 1][0] - busy[i][1] for i in range(len(busy) - 1) if busy[i + 1][0] - busy[i][1] <= gap_us)
    step_us = [b - a for a, b in steps_marks]
    return {
        "steps": steps,
        "gpu_span_us": span,
        "gpu_busy_us_per_step": busy_us / steps,
        "gpu_span_us_per_step": span / steps,
        "busy_fraction": busy_us / span,
        "kernels_per_step": len(kernels) / steps,
        "kernel_us_per_step": sum(e.get("dur", 0) for e in kernels) / steps,
        "small_gaps_us_per_step": small_gaps / steps,
        "gaps_over_threshold_per_step": len(gaps) / steps,
        "gap_us_over_threshold_per_step": sum(b - a for a, b in gaps) / steps,
        "gaps_by_host_phase": {
            k: {"count_per_step": len(v) / steps, "us_per_step": sum(v) / steps, "median_us": statistics.median(v)}
            for k, v in sorted(by_edge.items(), key=lambda kv: -sum(kv[1]))
        },
        "host_step_us_median_under_profiler": statistics.median(step_us) if step_us else None,
    }


def engine_config(args: argparse.Namespace, model: Path) -> EngineConfig:
    return EngineConfig(
        model=model,
        tp=args.tp,
        device="cuda",
        dtype="bfloat16",
        max_running=args.max_running,
        max_model_len=args.input_len + args.output_len + 8,
        cuda_graph=not args.no_cuda_graph,
        overlap=not args.no_overlap,
    )


def warm_steps(args: argparse.Namespace) -> int:
    return max(4, -(-args.input_len * args.batch // 2048) + 8)  # prefill + warm decode steps


def timed_counts(args: argparse.Namespace) -> tuple[int, int]:
    """(plain steps, steps with the phase wrappers) before the traced steps."""
    n = min(args.steps, (args.output_len - 16) // 3)
    return n, n


def trace_count(args: argparse.Namespace) -> int:
    plain, timed = timed_counts(args)
    return min(args.trace_steps, args.output_len - 16 - plain - timed - 2)


def build_shape(args: argparse.Namespace) -> tempfile.TemporaryDirectory[str]:
    from bench_shapes import build_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix=f"profile-{args.shape}-")
    t0 = time.perf_counter()
    build_checkpoint(args.shape, Path(tmp.name))
    print(f"checkpoint {args.shape}: built in {time.perf_counter() - t0:.1f} s", flush=True)
    return tmp


def cuda_profile(args: argparse.Namespace, comm: Any = None) -> int:
    tmp = None
    model = args.model
    if model is None:
        tmp = build_shape(args)
        model = Path(tmp.name)
    config = engine_config(args, model)
    llm = LLM(config, comm)
    core = llm.core
    add_requests(llm, args.batch, args.input_len, args.output_len)
    for _ in range(warm_steps(args)):
        core.step()
    torch.cuda.synchronize()
    n_plain, n_timed = timed_counts(args)
    plain = []
    for _ in range(n_plain):
        t0 = time.perf_counter()
        core.step()
        plain.append(time.perf_counter() - t0)
    step_ms = statistics.median(plain) * 1e3
    phases = Phases()
    instrument(llm, phases)
    timed_steps = []
    for _ in range(n_timed):
        t0 = time.perf_counter()
        core.step()
        timed_steps.append(time.perf_counter() - t0)
    n = len(timed_steps)
    host = {k: v / n * 1e6 for k, v in sorted(phases.total.items(), key=lambda kv: -kv[1])}
    inner = {"graph replay launch"}  # inside runner.run
    accounted = sum(v for k, v in host.items() if k not in inner)
    timed_ms = statistics.median(timed_steps) * 1e3
    trace_steps = trace_count(args)
    trace = Path(args.trace) if args.trace else Path(tempfile.mkdtemp()) / "trace.json"
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(trace_steps):
            with torch.profiler.record_function("step"):
                core.step()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace))
    tl = timeline(trace, trace_steps, args.gap_us)
    result = {
        "device": torch.cuda.get_device_name(),
        "shape": args.shape or str(args.model),
        "tp": args.tp,
        "all_reduce": ("one-shot P2P" if getattr(comm, "p2p", None) is not None else "NCCL") if comm else "-",
        "batch": args.batch,
        "overlap": core.overlap,
        "cuda_graphs": core.runner.graphs is not None,
        "step_ms_median_plain": step_ms,
        "tok_s_plain": args.batch / step_ms * 1e3,
        "step_ms_median_timed_phases": timed_ms,
        "host_us_per_step": host,
        "host_us_accounted_top_level": accounted,
        "timeline": tl,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(
        f"\n{result['device']} {result['shape']} tp={args.tp} batch {args.batch}: step {step_ms:.3f} ms "
        f"({result['tok_s_plain']:.1f} tok/s); GPU busy {tl.get('gpu_busy_us_per_step', 0):.0f} us/step "
        f"({100 * tl.get('busy_fraction', 0):.1f}% of the span), host accounted {accounted:.0f} us/step"
    )
    llm.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


def worker_profile(args: argparse.Namespace, comm: Any) -> int:
    """Ranks > 0: the worker loop, with torch.profiler over the same steps rank 0 traces."""
    from minisgl_decl.engine import tp as tp_mod
    from minisgl_decl.engine.core import build_runner
    from minisgl_decl.engine.loader import load_engine_model

    config = engine_config(args, args.model)
    loaded = load_engine_model(config, comm, progress=False)
    runner, _ = build_runner(config, loaded, comm)
    plain, timed = timed_counts(args)
    start = warm_steps(args) + plain + timed
    n = trace_count(args)
    phases = Phases()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    prof = torch.profiler.profile(activities=activities)
    calls = 0
    inner_run = runner.run
    run_s: list[float] = []

    def run(*a: Any, **k: Any) -> Any:
        nonlocal calls
        if calls == max(0, start - 5):  # a few steps early: the profiler's start-up stays out of the window
            prof.start()
        t0 = time.perf_counter()
        mark = torch.profiler.record_function("step" if start <= calls < start + n else "untraced step")
        with mark, phases.timed("worker runner.run (host)"):
            out = inner_run(*a, **k)
        if start <= calls < start + n:
            run_s.append(time.perf_counter() - t0)
        calls += 1
        if calls == start + n:
            torch.cuda.synchronize()
            prof.stop()
        return out

    runner.run = run  # type: ignore[method-assign]
    broadcast = tp_mod.dist.broadcast

    def timed_broadcast(t: torch.Tensor, *a: Any, **k: Any) -> Any:
        what = "worker: wait for the step message (gloo)" if t.device.type == "cpu" else "worker: NCCL broadcast"
        with phases.timed(what):
            return broadcast(t, *a, **k)

    tp_mod.dist.broadcast = timed_broadcast  # type: ignore[assignment]
    tp_mod.worker_loop(runner, comm)
    trace = Path(tempfile.mkdtemp()) / f"trace_rank{comm.rank}.json"
    prof.export_chrome_trace(str(trace))
    result = {
        "rank": comm.rank,
        "runner_run_host_us_median_profiled": statistics.median(run_s) * 1e6 if run_s else None,
        "host_us_per_call_whole_run": {k: v / max(1, phases.count.get(k, 1)) * 1e6 for k, v in phases.total.items()},
        "timeline": timeline(trace, n, args.gap_us),
    }
    if args.json:
        Path(f"{args.json}.rank{comm.rank}").write_text(json.dumps(result, indent=1))
    if args.trace:
        Path(f"{args.trace}.rank{comm.rank}").write_text(trace.read_text())
    return 0


def tp_main(args: argparse.Namespace) -> int:
    """Under a launch: rank 0 profiles the engine, the others the worker loop."""
    from minisgl_decl.runtime.distributed import init_group, rank_env, shutdown

    env = rank_env()
    if env is None:
        raise SystemExit("tp_main runs under a launch")
    comm = init_group(env, "cuda")
    try:
        return cuda_profile(args, comm) if comm.rank == 0 else worker_profile(args, comm)
    finally:
        shutdown()


def launch_tp(args: argparse.Namespace) -> int:
    """Build the shape's checkpoint once, then run `--tp` ranks of this tool on it."""
    from minisgl_decl.runtime.distributed import launch

    tmp = build_shape(args) if args.model is None else None
    model = Path(tmp.name) if tmp is not None else args.model
    code = launch([sys.executable, __file__, *sys.argv[1:], "--model", str(model)], args.tp)
    for extra in sorted(Path(args.json).parent.glob(Path(args.json).name + ".rank*")) if args.json else []:
        w = json.loads(extra.read_text())
        tl = w["timeline"]
        print(
            f"rank {w['rank']} (worker): GPU busy {tl.get('gpu_busy_us_per_step', 0):.0f} us/step "
            f"({100 * tl.get('busy_fraction', 0):.1f}% of the span), kernels {tl.get('kernel_us_per_step', 0):.0f} "
            f"us/step; runner.run host {w['runner_run_host_us_median_profiled']:.0f} us (median, profiled)"
        )
    if tmp is not None:
        tmp.cleanup()
    return code


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", type=Path)
    p.add_argument("--shape", help="CUDA: a tools/bench_shapes.py shape, built with random weights")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--max-running", type=int, default=64)
    p.add_argument("--trace-steps", type=int, default=30)
    p.add_argument("--gap-us", type=float, default=5.0)
    p.add_argument("--trace", help="CUDA: where to write the chrome trace")
    p.add_argument("--json", help="CUDA: write the results here")
    p.add_argument("--no-overlap", action="store_true")
    p.add_argument("--no-cuda-graph", action="store_true")
    p.add_argument("--tp", type=int, default=1, help="CUDA: tensor-parallel ranks (rank 0 profiled as above)")
    args = p.parse_args()
    if args.model is None and args.shape is None:
        p.error("give --model DIR or (with --device cuda) --shape NAME")
    if args.device == "cuda" and args.tp > 1:
        from minisgl_decl.runtime.distributed import rank_env

        return tp_main(args) if rank_env() is not None else launch_tp(args)
    if args.device == "cuda":
        return cuda_profile(args)
    if args.model is None:
        p.error("--shape needs --device cuda")
    return cpu_profile(args)


if __name__ == "__main__":
    sys.exit(main())
