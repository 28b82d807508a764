"""Host cost of a decode step on the CPU: the engine loop, the engine behind `AsyncEngine`, the full server.

The model costs ~nothing here, so what is timed is the host's work per step: scheduling,
batch building, the runner's host side, sampling bookkeeping, detokenisation, stop checks,
the hand-off to asyncio and (server) the SSE chunks over HTTP. The forward is replaced, in
this tool only, by stubs that return fixed logits (one ordinary token per row):

- decode steps go through the runner's CUDA-graph path (`runtime/cuda_graph.DecodeGraphs.run`,
  the real code) with the CUDA parts faked: the events are no-ops and "replay" returns the
  stub logits, so the host work is the GPU server's;
- prefill steps run the runner's eager path with the model call stubbed.

The checkpoint is a tiny random Llama (1 layer, hidden 16) with the demo model's tokenizer;
its vocabulary is `--vocab` (default 2048) so the argmax of the stub logits (device work on
a GPU) stays small. Overlap scheduling is on, as on CUDA.

Modes (per batch size B, B requests with 16-token prompts, greedy, EOS ignored):

- `engine`: `EngineCore.step()` in a loop; us per decode step (wall / steps).
- `async`: `AsyncEngine` (engine thread) with B asyncio consumers in the main thread; us per
  step = median over requests of (last delta - first delta) / (tokens between them).
- `server`: the app under uvicorn in a child process (engine thread + HTTP event loop), driven
  by `tools/bench_client.py` with B concurrent streamed `/v1/completions`; us per step =
  median TPOT.

`--baseline-ref REF` runs the same measurements on REF (a detached git worktree) and on the
working tree, in child processes, taking turns for `--rounds` rounds (the fastest of each
cell is kept: the machine is shared and noisy), and prints both side by side:

    OMP_NUM_THREADS=1 python tools/bench_host_step.py --baseline-ref HEAD~3 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT_LEN = 16
DEFAULT_SWITCH_S = sys.getswitchinterval()
WARM_STEPS = 8


# ---------------------------------------------------------------- the tiny checkpoint


def build_checkpoint(out: Path, vocab: int) -> Path:
    from minisgl_decl.parity.hf_reference import build_reference
    from minisgl_decl.spec.compile import load_ir

    demo = ROOT / "models" / "smollm2-135m-instruct"
    if not (demo / "tokenizer.json").is_file():
        raise SystemExit(f"{demo}: the demo model is missing (python tools/prepare_demo_model.py)")
    overrides = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
    }
    build_reference(load_ir(ROOT / "specs" / "llama.yaml"), overrides, seed=0, directory=out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo / name, out / name)
    return out


# ---------------------------------------------------------------- stubs (this tool only)


class _NoEvent:
    def synchronize(self) -> None:
        pass

    def record(self) -> None:
        pass


class _NoGraph:
    def replay(self) -> None:
        pass


class _StubModel:
    """The model call: fixed logits for the rows the runner asks for."""

    def __init__(self, logits: Any) -> None:
        self.logits = logits

    def __call__(self, tokens: Any, batch: Any) -> Any:
        rows = batch.logits_indices.shape[0] if batch.logits_indices is not None else tokens.shape[0]
        return self.logits[:rows]


def install_stubs(core: Any, vocab: int, max_rows: int) -> None:
    """Replace the forward of `core`'s runner: eager model call and CUDA-graph replay return fixed logits."""
    import torch

    from minisgl_decl.runtime.cuda_graph import batch_sizes_for

    ordinary = [t for t in range(vocab) if t not in set(core.tokenizer.all_special_ids)]
    logits = torch.zeros(max(max_rows, 1), vocab)
    for i in range(logits.shape[0]):
        logits[i, ordinary[(37 * i + 101) % len(ordinary)]] = 1.0
    runner = core.runner
    runner.model = _StubModel(logits)
    runner.graphs = host_decode_graphs(runner, batch_sizes_for(max_rows), lambda g, bs: (_NoGraph(), logits[:bs]))


def host_decode_graphs(runner: Any, sizes: list[int], graph_for: Callable[[Any, int], tuple[Any, Any]]) -> Any:
    """The real `DecodeGraphs` of `runner` (its `run`: one host copy, placeholder resolution,
    request-table write, padding to the next size) with the CUDA parts replaced: the events are
    no-ops and `graph_for(graphs, bs)` gives each size's (object with `replay()`, output logits)."""
    import torch

    from minisgl_decl.runtime.cuda_graph import _PAD, DecodeGraphs

    g = object.__new__(DecodeGraphs)  # no capture (it needs CUDA); the fields `run` reads
    g.model, g.kv, g.table, g.comm, g.device = runner.model, runner.kv, runner.req_to_token, runner.comm, runner.device
    g.sizes, g.max_batch = sizes, sizes[-1]
    g.inputs = {bs: torch.zeros(5, bs, dtype=torch.int64) for bs in sizes}
    g.host = [torch.zeros(5, g.max_batch, dtype=torch.int64) for _ in range(2)]
    g.copied = [_NoEvent(), _NoEvent()]
    g.turn = 0
    g.pad = torch.tensor(_PAD, dtype=torch.int64)[:, None]
    g.cu = torch.arange(g.max_batch + 1, dtype=torch.int64)
    g.graphs = {bs: graph_for(g, bs) for bs in sizes}
    return g


def make_core(model: Path, max_rows: int) -> Any:
    from minisgl_decl.engine.api import EngineConfig
    from minisgl_decl.engine.core import EngineCore
    from minisgl_decl.engine.loader import load_engine_model

    config = EngineConfig(
        model=model, device="cpu", dtype="float32", overlap=True, max_running=max_rows, max_kv_tokens=1 << 16
    )
    loaded = load_engine_model(config, progress=False)
    core = EngineCore(config, loaded)
    install_stubs(core, loaded.vocab_size, max_rows)
    return core


def prompts(core: Any, batch: int) -> list[list[int]]:
    special = set(core.tokenizer.all_special_ids)
    ordinary = [t for t in range(core.loaded.vocab_size) if t not in special]
    return [[ordinary[(i * 131 + j * 17) % len(ordinary)] for j in range(PROMPT_LEN)] for i in range(batch)]


def greedy(max_tokens: int) -> Any:
    from minisgl_decl.engine.api import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


# ---------------------------------------------------------------- modes


def run_engine(model: Path, batch: int, steps: int, profile: cProfile.Profile | None) -> float:
    core = make_core(model, max(batch, 1))
    for i, p in enumerate(prompts(core, batch)):
        core.add_request(f"r{i}", p, greedy(steps + 4 * WARM_STEPS))
    for _ in range(WARM_STEPS):  # prefill (one chunk) and the first decodes
        core.step()
    if profile is not None:
        profile.enable()
    t0 = time.perf_counter()
    reported = 0
    for _ in range(steps):
        reported += len(core.step())
    wall = time.perf_counter() - t0
    if profile is not None:
        profile.disable()
    if reported != batch * steps:
        raise SystemExit(f"engine: {reported} outputs in {steps} steps at batch {batch}")
    while core.has_work():
        core.step()
    return wall / steps * 1e6


def _per_step(stamps: list[list[tuple[float, int]]]) -> float:
    """Median over requests of time per token between its first and last delta, in us (a delta may
    carry several tokens: `AsyncEngine` merges the deltas of a reader that fell behind)."""
    per = [(s[-1][0] - s[0][0]) / (s[-1][1] - s[0][1]) for s in stamps if len(s) > 1 and s[-1][1] > s[0][1]]
    return statistics.median(per) * 1e6


def run_async(model: Path, batch: int, steps: int) -> float:
    from minisgl_decl.engine.client import AsyncEngine

    core = make_core(model, max(batch, 1))
    engine = AsyncEngine(core)

    async def one(i: int, prompt: list[int]) -> list[tuple[float, int]]:
        stamps = []
        async for out in engine.generate(f"r{i}", prompt, greedy(steps + WARM_STEPS)):
            if out.token_ids and out.completion_tokens > WARM_STEPS:
                stamps.append((time.perf_counter(), out.completion_tokens))
        return stamps

    async def all_of() -> list[list[tuple[float, int]]]:
        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(core, batch)))))

    try:
        return _per_step(asyncio.run(all_of()))
    finally:
        engine.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_child(model: Path, port: int, max_rows: int, profile_out: Path | None) -> None:
    """The server as `minisgl-decl serve` builds it, over the stubbed engine; profiles both threads."""
    from minisgl_decl.engine import client
    from minisgl_decl.server.app import build_app
    from minisgl_decl.server.run import serve_app

    profiles: list[cProfile.Profile] = []
    if profile_out is not None:
        original = client.AsyncEngine._loop

        def profiled_loop(self: Any) -> None:
            prof = cProfile.Profile()
            profiles.append(prof)
            prof.runcall(original, self)

        client.AsyncEngine._loop = profiled_loop  # type: ignore[method-assign]
    core = make_core(model, max_rows)
    engine = client.AsyncEngine(core)
    app = build_app(engine, engine.tokenizer, "tiny", None)
    main = cProfile.Profile()
    if profile_out is not None:
        main.enable()
    serve_app(app, "127.0.0.1", port, "tiny", None, "warning")
    if profile_out is not None:
        main.disable()
        engine.shutdown()
        text = io.StringIO()
        for name, prof in (("HTTP (uvicorn) thread", main), *(("engine thread", p) for p in profiles)):
            text.write(f"--- server, {name} ---\n")
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
        profile_out.write_text(text.getvalue())


def run_server(tree: Path, model: Path, batch: int, steps: int, profile_out: Path | None) -> float:
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_client import run_load, wait_healthy
    from bench_workload import BenchRequest

    port = free_port()
    cmd = [sys.executable, __file__, "--tree", str(tree), "--serve-child", str(port), "--model", str(model)]
    cmd += ["--max-rows", str(max(batch, 1))]
    if sys.getswitchinterval() != DEFAULT_SWITCH_S:
        cmd += ["--switch-interval", str(sys.getswitchinterval())]
    if profile_out is not None:
        cmd += ["--profile-out", str(profile_out)]
    proc = subprocess.Popen(cmd)  # PYTHONPATH from run_tree: the tree under test first
    url = f"http://127.0.0.1:{port}"
    try:
        if not asyncio.run(wait_healthy(url, 120.0, lambda: proc.poll() is None)):
            raise SystemExit("server: did not become healthy")
        core_prompts = [[300 + (i * 131 + j * 17) % 1500 for j in range(PROMPT_LEN)] for i in range(batch)]
        warm = [BenchRequest(tuple(core_prompts[0]), 8)]
        asyncio.run(run_load(url, "tiny", warm, [0.0], 1))
        reqs = [BenchRequest(tuple(p), steps) for p in core_prompts]
        results, _ = asyncio.run(run_load(url, "tiny", reqs, [0.0] * batch, batch))
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise SystemExit(f"server: {len(bad)} failed requests, first: {bad[0]}")
        tpots = [r.tpot for r in results if r.tpot is not None]
        return statistics.median(tpots) * 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ---------------------------------------------------------------- driver


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """In a child whose PYTHONPATH is the tree under test: every mode and batch size (us per step)."""
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {"engine": {}, "async": {}, "server": {}, "profile": ""}
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        if "engine" in args.modes:
            results["engine"][b] = min(run_engine(args.model, b, args.steps, None) for _ in range(args.repeat))
        if "async" in args.modes:
            results["async"][b] = min(run_async(args.model, b, args.steps) for _ in range(args.repeat))
        if "server" in args.modes:
            results["server"][b] = min(
                run_server(args.tree, args.model, b, args.steps, None) for _ in range(args.repeat)
            )
    if args.profile:
        text = io.StringIO()
        for b in (1, max(batches)):
            prof = cProfile.Profile()
            run_engine(args.model, b, args.steps, prof)
            text.write(f"--- engine loop, batch {b}, {args.steps} steps ---\n")
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
        if "server" in args.modes:
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "server.prof.txt"
                run_server(args.tree, args.model, max(batches), args.steps, out)
                if out.is_file():
                    text.write(out.read_text())
        results["profile"] = text.getvalue()
    return results


def run_tree(tree: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, __file__, "--tree", str(tree), "--model", str(model), "--json", str(out)]
        cmd += ["--batches", args.batches, "--steps", str(args.steps), "--modes", args.modes]
        cmd += ["--repeat", str(args.repeat)] + (["--profile"] if args.profile else [])
        if args.switch_interval is not None:
            cmd += ["--switch-interval", str(args.switch_interval)]
        path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
        return dict(json.loads(out.read_text()))


def best(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Cell by cell, the faster of two rounds (the profile of the newer one)."""
    if old is None:
        return new
    out: dict[str, Any] = {"profile": new["profile"] or old["profile"]}
    for mode in ("engine", "async", "server"):
        out[mode] = {b: min(v, old[mode].get(b, v)) for b, v in new[mode].items()}
    return out


def table(runs: dict[str, dict[str, Any]], batches: list[int]) -> str:
    names = list(runs)
    head = "| mode | batch | " + " | ".join(f"{n} us/step" for n in names) + " |"
    if len(names) == 2:
        head += " after / before |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode in ("engine", "async", "server"):
        for b in batches:
            vals = [runs[n][mode].get(str(b)) for n in names]
            if all(v is None for v in vals):
                continue
            cells = [f"{v:.0f}" if v is not None else "-" for v in vals]
            ratio = f" {vals[1] / vals[0]:.2f}x |" if len(vals) == 2 and None not in vals else ""
            lines.append(f"| {mode} | {b} | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--steps", type=int, default=128, help="decode steps timed per measurement")
    p.add_argument("--modes", default="engine,async,server")
    p.add_argument("--repeat", type=int, default=1, help="measurements per cell and round; the fastest is kept")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the trees taking turns; the fastest is kept")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--profile", action="store_true", help="also print cProfile top lists (engine loop, server)")
    p.add_argument("--baseline-ref", help="git ref measured first, from a detached worktree")
    p.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # child: the tree under test
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--serve-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--max-rows", type=int, default=64, help=argparse.SUPPRESS)
    p.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval in the measured processes (s)")
    args = p.parse_args()

    if args.tree is not None:  # a child: import the tree under test
        if args.switch_interval is not None:
            sys.setswitchinterval(args.switch_interval)
        sys.path.insert(0, str(args.tree))
        if args.serve_child is not None:
            serve_child(args.model, args.serve_child, args.max_rows, args.profile_out)
            return 0
        result = measure(args)
        args.json.write_text(json.dumps(result))
        return 0

    sys.path.insert(0, str(ROOT))
    batches = [int(b) for b in args.batches.split(",")]
    profile = args.profile
    with tempfile.TemporaryDirectory() as d:
        model = build_checkpoint(Path(d) / "tiny", args.vocab)
        trees: dict[str, Path] = {}
        base = Path(d) / "baseline"
        if args.baseline_ref:
            subprocess.run(["git", "worktree", "add", "--detach", str(base), args.baseline_ref], cwd=ROOT, check=True)
            trees[f"before ({args.baseline_ref})"] = base
        trees["after (working tree)" if args.baseline_ref else "working tree"] = ROOT
        runs: dict[str, dict[str, Any]] = {}
        try:
            for r in range(args.rounds):  # the trees take turns, so a busy spell of the machine hits both
                for name, tree in trees.items():
                    args.profile = profile and r == args.rounds - 1
                    runs[name] = best(runs.get(name), run_tree(tree, model, args))
        finally:
            if args.baseline_ref:
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    for name, r in runs.items():
        if r["profile"]:
            print(f"===== profile: {name} =====\n{r['profile']}")
    print(f"host us per decode step (CPU, {os.cpu_count()} cores, forward stubbed, vocab {args.vocab}):")
    print(table(runs, batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())
