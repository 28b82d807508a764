"""`tools/bench_serve.py --shapes ...`: serving speed on a GPU at real model shapes, transformers beside it.

For each shape (`tools/bench_shapes.py`): a random-weight checkpoint (bf16 safetensors +
config.json + a word-level tokenizer) is written to a temporary directory on this machine
(no network needed; the weights are drawn directly in bf16 on the GPU, no model init),
`minisgl-decl serve` is started on it (CUDA graphs and overlap scheduling at their
defaults, `--max-running` = the concurrency, so graphs are captured up to it), and through
its HTTP API:

* batch 1: `--b1-requests` requests one after another, prompt 128, 256 new tokens (greedy,
  EOS ignored), after one untimed request; decode tok/s = 1 / median TPOT (time per output
  token after the first);
* N concurrent (default 64; input and output lengths uniform in 100..1024, fixed seed), all
  sent at once, on the same server: output tok/s, TTFT and ITL p50/p99;
* with `--no-overlap-b1` (off by default: one more server start), batch 1 again on a second
  server started with `--no-overlap`.

Then the server stops and transformers runs on the same card and the same checkpoint
(loaded straight onto the GPU): `generate` (sdpa, greedy) at batch 1 (prompt 128, 256
tokens: decode tok/s from a full call minus a one-token call) and on the same N requests
as one left-padded batch (output tok/s counting each request's own length). The bound:
bytes one batch-1 step reads (every stored weight; of routed experts top_k / E) over the
copy bandwidth measured at the start of the run on the same GPU.

How it runs: this process starts one worker process per GPU (`python tools/bench_serve_gpu.py
--events FILE ...`, its own process group) and renders the table from the events the
workers append as they go (`tools/bench_serve_table.py`): every phase's wall time
(checkpoint, serve start with the times of its `engine:` lines, each load, transformers
load and each transformers run) ends up in the notes. `--time-budget S` stops the workers
(SIGTERM to the group, SIGKILL 20 s later) once S seconds have passed and still prints the
rows and phase times of what finished.

`--parallel-gpus N` runs the shapes on N GPUs of this host at once (longest first onto the
least-loaded GPU; each worker sees one GPU through CUDA_VISIBLE_DEVICES and measures its own
copy bandwidth, server and transformers baseline on it, so every row's bound and baseline
come from the card that ran it). What it can perturb: the GPUs are separate, but the host is
shared: CPU cores (transformers' host-bound generate loop and each server's engine and HTTP
threads; one worker's checkpoint writing or Triton compiling can run while another GPU is
being timed), host memory bandwidth and PCIe (checkpoint writes and weight loads), the disk
and page cache, and the Triton cache directory. Sequential runs (the default) have none of
that; compare the two when a number looks off.

Prints the table last (header: cards, date, versions, copy bandwidth); writes it (and the
events as JSON) under $OUT when set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(TOOLS.parent))

from bench_client import RequestResult, run_load, served_model  # noqa: E402
from bench_serve_table import assign, estimate, read_events, render, start_timeline  # noqa: E402
from bench_shapes import Checkpoint, build_checkpoint, shape_names  # noqa: E402
from bench_workload import BenchRequest, LengthDist, make_workload, percentile  # noqa: E402

PROMPT, NEW = 128, 256
GRACE_S = 20.0  # after SIGTERM, before SIGKILL
#: one line per server started by `_serve` (tools/bench_serve_tp.py prints them under its table)
NOTES: list[str] = []


class Stopped(BaseException):
    """SIGTERM in a worker (the time budget ran out): unwind, stopping the server and removing files."""


def add_parser_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPU shapes mode (--shapes)")
    g.add_argument("--concurrent", type=int, default=64, help="requests sent at once (default 64)")
    g.add_argument("--lengths", default="100:1024", help="input and output lengths of those (default 100:1024)")
    g.add_argument("--b1-requests", type=int, default=3, help="batch-1 requests (median TPOT; default 3)")
    g.add_argument("--no-overlap-b1", action="store_true", help="also batch 1 on a server with --no-overlap")
    g.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    g.add_argument(
        "--serve-arg", action="append", default=[], help="extra `serve` argument, e.g. --serve-arg=--no-overlap"
    )
    g.add_argument(
        "--policy-row",
        action="append",
        default=[],
        metavar="SHAPE:POLICY",
        help="also the concurrent load on a server with --schedule-policy POLICY for SHAPE (repeatable)",
    )
    g.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the tool on tiny shapes")
    g.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (from this run's start) and print what finished (default: no limit)",
    )
    g.add_argument(
        "--parallel-gpus",
        type=int,
        default=1,
        metavar="N",
        help="run the shapes on N GPUs of this host at once, one worker each (default 1: one after another)",
    )


def check_gpu_args(opts: argparse.Namespace) -> str | None:
    """The reason the shapes-mode options are unusable, or None."""
    try:
        names = shape_names(opts.shapes)
        LengthDist.parse(opts.lengths, "--lengths")
    except ValueError as exc:
        return str(exc)
    problems = [
        (not names, "--shapes names no shape"),
        (len(set(names)) != len(names), f"--shapes names a shape twice: {opts.shapes}"),
        (opts.concurrent < 0, f"--concurrent must be >= 0, got {opts.concurrent}"),
        (opts.b1_requests < 1, f"--b1-requests must be >= 1, got {opts.b1_requests}"),
        (opts.parallel_gpus < 1, f"--parallel-gpus must be >= 1, got {opts.parallel_gpus}"),
        (opts.time_budget is not None and opts.time_budget <= 0, f"--time-budget must be > 0, got {opts.time_budget}"),
    ]
    return next((msg for bad, msg in problems if bad), None)


# ---- the worker: one GPU, its shapes one after another ----


class Events:
    """Appends one JSON object per line to the events file (flushed at once: the parent may kill us)."""

    def __init__(self, path: Path, gpu: str) -> None:
        self.path, self.gpu, self.t0 = path, gpu, time.perf_counter()

    def emit(self, **fields: Any) -> None:
        event = {"gpu": self.gpu, "t": round(time.perf_counter() - self.t0, 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")

    @contextlib.contextmanager
    def phase(self, shape: str, name: str) -> Iterator[None]:
        self.emit(type="begin", shape=shape, phase=name)
        print(f"[GPU {self.gpu}] {shape}: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self.emit(type="phase", shape=shape, phase=name, seconds=time.perf_counter() - t0, error=repr(exc)[:300])
            raise
        dt = time.perf_counter() - t0
        self.emit(type="phase", shape=shape, phase=name, seconds=dt)
        print(f"[GPU {self.gpu}] {shape}: {name} {dt:.1f} s", flush=True)


def _serve(ckpt: Checkpoint, extra: list[str], max_running: int, device: str) -> Any:
    args = [
        "--model",
        str(ckpt.directory),
        "--device",
        device,
        "--max-running",
        str(max_running),
        "--max-model-len",
        "2304",
        "--log-level",
        "warning",
        *extra,
    ]
    try:
        server = _start(args)
    except RuntimeError as exc:  # another worker's server took the free port between the check and the bind
        if "could not listen" not in str(exc):
            raise
        server = _start(args)
    NOTES.append(f"  serve {' '.join(args[2:])}: healthy after {server.healthy_s:.0f} s")
    return server


def _start(args: list[str]) -> Any:
    from bench_serve import Server

    server = Server(args, None)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def _ok(results: list[RequestResult], what: str) -> list[RequestResult]:
    bad = [r.error for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)} of {len(results)} requests failed, e.g. {bad[0]}")
    return results


def _batch1(url: str, model: str, vocab: int, n: int) -> float:
    """Decode tok/s at batch 1: 1 / median TPOT over `n` requests sent one at a time."""
    gen = torch.Generator().manual_seed(1)
    reqs = [BenchRequest(tuple(torch.randint(1, vocab, (PROMPT,), generator=gen).tolist()), NEW) for _ in range(n)]
    asyncio.run(run_load(url, model, reqs[:1], [0.0], 1))  # warm-up
    results, _ = asyncio.run(run_load(url, model, reqs, [0.0] * n, 1))
    tpots = [r.tpot for r in _ok(results, "batch 1") if r.tpot is not None]
    return 1.0 / statistics.median(tpots)


def _concurrent(url: str, model: str, reqs: list[BenchRequest]) -> dict[str, float]:
    results, wall = asyncio.run(run_load(url, model, reqs, [0.0] * len(reqs), len(reqs)))
    ok = _ok(results, "concurrent")
    ms = 1000.0
    ttft = [r.ttft * ms for r in ok]
    itl = [g * ms for r in ok for g in r.itl]
    return {
        "n": len(reqs),
        "output_tok_s": sum(r.completion_tokens for r in ok) / wall,
        "wall_s": wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50),
        "itl_p99": percentile(itl, 99),
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _serve_phases(
    name: str, ckpt: Checkpoint, reqs: list[BenchRequest], opts: argparse.Namespace, ev: Events, sync: bool
) -> None:
    """Start a server, batch 1 (and the concurrent load unless `sync`), stop it; results as events."""
    tag = "serve --no-overlap" if sync else "serve"
    extra = [*opts.serve_arg, "--no-overlap"] if sync else list(opts.serve_arg)
    with ev.phase(name, f"{tag} start"):
        server = _serve(ckpt, extra, 1 if sync else max(opts.concurrent, 1), opts.device)
    ev.emit(type="note", shape=name, phase=f"{tag} start", text=start_timeline(server.timeline, server.healthy_s))
    try:
        model = asyncio.run(served_model(server.url))
        with ev.phase(name, f"{tag} batch 1"):
            b1 = _batch1(server.url, model, ckpt.vocab, opts.b1_requests)
        ev.emit(type="result", shape=name, key="serve_b1_sync" if sync else "serve_b1", value={"tok_s": b1})
        if reqs and not sync:
            with ev.phase(name, f"{tag} {len(reqs)} concurrent"):
                many = _concurrent(server.url, model, reqs)
            ev.emit(type="result", shape=name, key="serve_many", value=many)
    finally:
        with ev.phase(name, f"{tag} stop"):
            code = server.stop()
    if code != 0:
        ev.emit(
            type="note", shape=name, phase=f"{tag} stop", text=f"serve exited with {code}: {server.output()[-300:]}"
        )


def _policy_phase(
    name: str, ckpt: Checkpoint, reqs: list[BenchRequest], policy: str, opts: argparse.Namespace, ev: Events
) -> None:
    """The concurrent load again on a server admitting prompts by another `--schedule-policy`."""
    tag = f"serve --schedule-policy {policy}"
    with ev.phase(name, f"{tag} start"):
        server = _serve(ckpt, [*opts.serve_arg, f"--schedule-policy={policy}"], max(opts.concurrent, 1), opts.device)
    try:
        model = asyncio.run(served_model(server.url))
        asyncio.run(run_load(server.url, model, reqs[:1], [0.0], 1))  # the same one-request warm-up as batch 1
        with ev.phase(name, f"{tag} {len(reqs)} concurrent"):
            many = _concurrent(server.url, model, reqs)
        ev.emit(type="result", shape=name, key=f"serve_many@{policy}", value=many)
    finally:
        with ev.phase(name, f"{tag} stop"):
            server.stop()


def _transformers_phases(name: str, ckpt: Checkpoint, reqs: list[BenchRequest], device: str, ev: Events) -> None:
    """transformers `generate` on the same checkpoint and card: batch 1, then `reqs` as one batch."""
    from bench_gpu_decode import hf_decode
    from bench_hf import _generate
    from transformers import AutoModelForCausalLM

    with ev.phase(name, "transformers load"):
        # straight onto the device where `accelerate` is installed (transformers needs it for device_map)
        placement = {"device_map": device} if importlib.util.find_spec("accelerate") else {}
        model = AutoModelForCausalLM.from_pretrained(
            ckpt.directory, dtype=torch.bfloat16, attn_implementation="sdpa", **placement
        )
        model = model.to(device).eval()
    try:
        with ev.phase(name, "transformers batch 1"):
            b1 = hf_decode(model, ckpt.vocab, 1, PROMPT, NEW, device)
        ev.emit(type="result", shape=name, key="hf_b1", value={"tok_s": b1})
        if reqs:
            with ev.phase(name, f"transformers batch {len(reqs)}"), torch.inference_mode():
                _generate(model, [BenchRequest(reqs[0].prompt_ids, 4)], 0, device)  # warm-up
                _sync(device)
                t0 = time.perf_counter()
                _generate(model, reqs, 0, device)
                _sync(device)
                many = sum(r.output_len for r in reqs) / (time.perf_counter() - t0)
            ev.emit(type="result", shape=name, key="hf_many", value={"tok_s": many, "n": len(reqs)})
    finally:
        del model
        _free(device)


def bench_shape(name: str, copy: float, opts: argparse.Namespace, ev: Events) -> None:
    directory = Path(tempfile.mkdtemp(prefix=f"serve-{name}-", dir=opts.workdir))
    try:
        with ev.phase(name, "checkpoint"):
            ckpt = build_checkpoint(name, directory, opts.device)
            _free(opts.device)
        bound = copy * 1e12 / ckpt.active_bytes
        ev.emit(type="shape", shape=name, weight_bytes=ckpt.weight_bytes, active_bytes=ckpt.active_bytes, bound=bound)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        dist = LengthDist.parse(opts.lengths, "--lengths")
        reqs = make_workload(tokenizer, opts.concurrent, dist, dist, opts.seed) if opts.concurrent > 0 else []
        _serve_phases(name, ckpt, reqs, opts, ev, sync=False)
        if opts.no_overlap_b1:
            _serve_phases(name, ckpt, reqs, opts, ev, sync=True)
        for shape_policy in opts.policy_row:
            shape, _, policy = shape_policy.partition(":")
            if shape == name and policy and reqs:
                _policy_phase(name, ckpt, reqs, policy, opts, ev)
        if not opts.no_transformers:
            _transformers_phases(name, ckpt, reqs, opts.device, ev)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _free(opts.device)


def device_event(device: str) -> tuple[dict[str, Any], float]:
    """(the `device` event's fields, copy TB/s): card, date, versions, copy bandwidth of this GPU."""
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.startswith("cuda"):
        from gpu_copy_bandwidth import copy_tbps

        props = torch.cuda.get_device_properties(0)
        card, sms, copy = props.name, props.multi_processor_count, copy_tbps()
    else:
        card, sms, copy = device, None, 0.1  # a smoke test of the tool: the bound is not meaningful
    versions = {
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    date = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    return {"type": "device", "card": card, "sms": sms, "copy_tbps": copy, "date": date, "versions": versions}, copy


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def run_worker(opts: argparse.Namespace) -> int:
    from minisgl_decl.parity.run import quiet_transformers

    signal.signal(signal.SIGTERM, _on_sigterm)
    quiet_transformers()
    ev = Events(Path(opts.events), opts.label)
    failed = 0
    try:
        fields, copy = device_event(opts.device)
        ev.emit(**fields)
        print(f"[GPU {opts.label}] {fields['card']}: copy bandwidth {copy:.2f} TB/s", flush=True)
        for name in shape_names(opts.shapes):
            try:
                bench_shape(name, copy, opts, ev)
            except Exception as exc:  # report and go on with the next shape
                failed += 1
                ev.emit(type="error", shape=name, text=f"{type(exc).__name__}: {exc}"[:2000])
                print(f"[GPU {opts.label}] {name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
    except Stopped:
        print(f"[GPU {opts.label}] stopped (time budget)", flush=True)
        return 3
    except Exception as exc:
        ev.emit(type="error", text=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    ev.emit(type="end")
    return 1 if failed else 0


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="one GPU's worker of tools/bench_serve.py --shapes (started by it)")
    p.add_argument("--shapes", required=True)
    p.add_argument("--events", required=True, help="JSON-lines file the worker appends its events to")
    p.add_argument("--label", default="0", help="the GPU's name in the events and the table")
    p.add_argument("--workdir", default=None, help="where the checkpoints go (default: the temp dir)")
    p.add_argument("--seed", type=int, default=0)
    add_parser_args(p)
    return p


def worker_argv(opts: argparse.Namespace, shapes: list[str], events: Path, label: str, workdir: Path) -> list[str]:
    """The worker's command-line arguments for `shapes` (the measurement options copied from `opts`)."""
    argv = [
        "--shapes",
        ",".join(shapes),
        "--events",
        str(events),
        "--label",
        label,
        "--workdir",
        str(workdir),
        "--seed",
        str(opts.seed),
        "--concurrent",
        str(opts.concurrent),
        "--lengths",
        opts.lengths,
        "--b1-requests",
        str(opts.b1_requests),
        "--device",
        opts.device,
    ]
    argv += [f"--serve-arg={a}" for a in opts.serve_arg]
    argv += [f"--policy-row={a}" for a in opts.policy_row]
    if opts.no_overlap_b1:
        argv.append("--no-overlap-b1")
    if opts.no_transformers:
        argv.append("--no-transformers")
    return argv


# ---- the orchestrator: workers, the time budget, the table ----


def gpu_ids(n: int, device: str) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each of `n` workers (None: leave the environment as it is)."""
    if n == 1 or not device.startswith("cuda"):
        return [None] * n
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else [str(i) for i in range(n)]
    if len(ids) < n or torch.cuda.device_count() < n:
        raise ValueError(f"--parallel-gpus {n}: only {min(len(ids), torch.cuda.device_count())} GPU(s) visible")
    return ids[:n]


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_workers(procs: list[subprocess.Popen[bytes]], grace_s: float = GRACE_S) -> None:
    """SIGTERM each live worker's process group (worker and its server), SIGKILL what is left after `grace_s`."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < end:
        time.sleep(0.2)
    for p in procs:
        _signal_group(p, signal.SIGKILL)  # also a server left behind by a worker that exited
        p.wait()


def wait_workers(procs: list[subprocess.Popen[bytes]], deadline: float | None) -> bool:
    """Wait for every worker; past `deadline` (time.monotonic) stop them. True when stopped by the deadline."""
    try:
        while any(p.poll() is None for p in procs):
            if deadline is not None and time.monotonic() >= deadline:
                print("time budget reached: stopping the workers", flush=True)
                stop_workers(procs)
                return True
            time.sleep(0.5)
    except BaseException:
        stop_workers(procs)
        raise
    stop_workers(procs, grace_s=0.0)  # nothing left running in their groups
    return False


def run(opts: argparse.Namespace) -> int:
    t0 = time.monotonic()
    problem = check_gpu_args(opts)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    names = shape_names(opts.shapes)
    n = min(opts.parallel_gpus, len(names))
    try:
        ids = gpu_ids(n, opts.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    groups = assign(names, n) if n > 1 else [names]
    busiest = max(estimate(g) for g in groups)
    if opts.time_budget is not None and busiest > opts.time_budget:
        print(
            f"note: ~{busiest:.0f} s estimated for the busiest GPU, more than --time-budget {opts.time_budget:.0f} s: "
            "what does not finish in time is left out of the table",
            flush=True,
        )
    root = Path(tempfile.mkdtemp(prefix="bench_serve-"))
    procs: list[subprocess.Popen[bytes]] = []
    files: list[Path] = []
    try:
        for i, group in enumerate(groups):
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if ids[i] is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(ids[i])
            files.append(root / f"events-{i}.jsonl")
            argv = [sys.executable, str(Path(__file__)), *worker_argv(opts, group, files[-1], str(i), root)]
            where = f", CUDA_VISIBLE_DEVICES={ids[i]}" if ids[i] else ""
            print(f"worker {i}: {', '.join(group)} (~{estimate(group):.0f} s estimated{where})", flush=True)
            procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
        deadline = t0 + opts.time_budget if opts.time_budget is not None else None
        stopped = wait_workers(procs, deadline)
        events = [e for f in files for e in read_events(f)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = {
        "shapes": names,
        "concurrent": opts.concurrent,
        "lengths": opts.lengths,
        "seed": opts.seed,
        "b1_requests": opts.b1_requests,
        "gpus": len(groups),
        "budget": opts.time_budget,
        "stopped": stopped,
        "wall_s": time.monotonic() - t0,
    }
    text = render(events, meta)
    print("\n" + text, flush=True)
    out = os.environ.get("OUT")
    if out:
        stem = "serve_" + "_".join(names)
        Path(out, stem + ".md").write_text(text + "\n")
        Path(out, stem + ".json").write_text(json.dumps({"meta": meta, "events": events}, indent=1))
    errors = any(e.get("type") == "error" for e in events)
    return 1 if stopped or errors or any(p.returncode not in (0, None) for p in procs) else 0


if __name__ == "__main__":
    sys.exit(run_worker(worker_parser().parse_args()))
