"""`tools/bench_serve.py --shapes ...`: serving speed on a GPU at real model shapes, in one process.

For each shape (`tools/bench_shapes.py`): a random-weight checkpoint (bf16 safetensors +
config.json + a word-level tokenizer) is written to a temporary directory on this machine
(no network needed), `minisgl-decl serve` is started on it (CUDA graphs and overlap
scheduling at their defaults, `--max-running` = the concurrency), and through its HTTP API:

* batch 1: `--b1-requests` requests one after another, prompt 128, 256 new tokens (greedy,
  EOS ignored); decode tok/s = 1 / median TPOT (time per output token after the first);
* N concurrent (default 64; input and output lengths uniform in 100..1024, fixed seed), all
  sent at once: output tok/s, TTFT and ITL p50/p99;
* with `--no-overlap-b1`, batch 1 again on a second server started with `--no-overlap`.

Then the server stops and transformers runs on the same card in this process: `generate`
(sdpa, greedy) at batch 1 (prompt 128, 256 tokens: decode tok/s from a full call minus a
one-token call) and on the same N requests as one left-padded batch (output tok/s counting
each request's own length). The bound: bytes one batch-1 step reads (every stored weight;
of routed experts top_k / E) over the copy bandwidth measured at the start of this run.

Prints one table last; writes it (and JSON) under $OUT when set.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from bench_client import RequestResult, run_load, served_model
from bench_shapes import Checkpoint, build_checkpoint, shape_names
from bench_workload import BenchRequest, LengthDist, make_workload, percentile

PROMPT, NEW = 128, 256
ROWS: list[list[str]] = []
NOTES: list[str] = []


def add_parser_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("GPU shapes mode (--shapes)")
    g.add_argument("--concurrent", type=int, default=64, help="requests sent at once (default 64)")
    g.add_argument("--lengths", default="100:1024", help="input and output lengths of those (default 100:1024)")
    g.add_argument("--b1-requests", type=int, default=3, help="batch-1 requests (median TPOT; default 3)")
    g.add_argument("--no-overlap-b1", action="store_true", help="also batch 1 on a server with --no-overlap")
    g.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    g.add_argument("--serve-arg", action="append", default=[], help="extra `serve` argument (repeatable)")
    g.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the tool on tiny shapes")


def _row(*cells: object) -> None:
    ROWS.append([f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells])
    print("row: " + " | ".join(ROWS[-1]), flush=True)


def _serve(ckpt: Checkpoint, extra: list[str], max_running: int, device: str) -> Any:
    from bench_serve import Server

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
    t0 = time.perf_counter()
    server = Server(args, None)
    server.start()
    NOTES.append(f"  serve {' '.join(args[2:])}: healthy after {time.perf_counter() - t0:.0f} s")
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
        "output_tok_s": sum(r.completion_tokens for r in ok) / wall,
        "wall_s": wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50": percentile(itl, 50),
        "itl_p99": percentile(itl, 99),
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _hf(ckpt: Checkpoint, reqs: list[BenchRequest], device: str) -> tuple[float, float]:
    """transformers: (batch-1 decode tok/s, output tok/s of `reqs` as one batch)."""
    from bench_gpu_decode import hf_decode
    from bench_hf import _generate
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt.directory, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = model.to(device).eval()
    b1 = hf_decode(model, ckpt.vocab, 1, PROMPT, NEW, device)
    many = float("nan")
    if reqs:
        with torch.inference_mode():
            _generate(model, [BenchRequest(reqs[0].prompt_ids, 4)], 0, device)
            _sync(device)
            t0 = time.perf_counter()
            _generate(model, reqs, 0, device)
            _sync(device)
            many = sum(r.output_len for r in reqs) / (time.perf_counter() - t0)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return b1, many


def bench_shape(name: str, copy: float, opts: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix=f"serve-{name}-"))
    try:
        t0 = time.perf_counter()
        ckpt = build_checkpoint(name, directory, opts.device)
        bound = copy * 1e12 / ckpt.active_bytes
        NOTES.append(
            f"{name}: checkpoint written in {time.perf_counter() - t0:.0f} s; {ckpt.weight_bytes / 1e9:.2f} GB "
            f"stored, {ckpt.active_bytes / 1e9:.2f} GB read per batch-1 step; bound {bound:.1f} tok/s"
        )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        dist = LengthDist.parse(opts.lengths, "--lengths")
        reqs = make_workload(tokenizer, opts.concurrent, dist, dist, opts.seed) if opts.concurrent > 0 else []
        server = _serve(ckpt, opts.serve_arg, max(opts.concurrent, 1), opts.device)
        try:
            model = asyncio.run(served_model(server.url))
            b1 = _batch1(server.url, model, ckpt.vocab, opts.b1_requests)
            many = _concurrent(server.url, model, reqs) if reqs else None
        finally:
            server.stop()
        b1_sync = None
        if opts.no_overlap_b1:
            server = _serve(ckpt, [*opts.serve_arg, "--no-overlap"], 1, opts.device)
            try:
                b1_sync = _batch1(server.url, asyncio.run(served_model(server.url)), ckpt.vocab, opts.b1_requests)
            finally:
                server.stop()
        hf_b1 = hf_many = float("nan")
        if not opts.no_transformers:
            hf_b1, hf_many = _hf(ckpt, reqs, opts.device)
        _row(name, "batch 1", "serve (graphs, overlap)", b1, f"{b1 / bound:.0%}", f"{b1 / hf_b1:.2f}x", "-", "-")
        if b1_sync is not None:
            _row(name, "batch 1", "serve --no-overlap", b1_sync, f"{b1_sync / bound:.0%}", f"{b1_sync / hf_b1:.2f}x")
        _row(name, "batch 1", "transformers generate", hf_b1, f"{hf_b1 / bound:.0%}", "1.00x", "-", "-")
        _row(name, "batch 1", "bound: bytes / copy BW", bound, "100%", "-", "-", "-")
        if many is not None:
            n = len(reqs)
            _row(
                name,
                f"{n} concurrent",
                "serve (graphs, overlap)",
                many["output_tok_s"],
                "-",
                f"{many['output_tok_s'] / hf_many:.2f}x",
                f"{many['ttft_p50']:.0f} / {many['ttft_p99']:.0f}",
                f"{many['itl_p50']:.1f} / {many['itl_p99']:.1f}",
            )
            _row(name, f"{n} concurrent", f"transformers generate (batch {n})", hf_many, "-", "1.00x", "-", "-")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        gc.collect()
        if opts.device == "cuda":
            torch.cuda.empty_cache()


def run(opts: argparse.Namespace) -> int:
    import transformers
    import triton

    from minisgl_decl.parity.run import quiet_transformers

    quiet_transformers()
    names = shape_names(opts.shapes)
    if opts.device == "cuda":
        from gpu_copy_bandwidth import copy_tbps

        props = torch.cuda.get_device_properties(0)
        card, copy = f"{props.name} ({props.multi_processor_count} SMs)", copy_tbps()
    else:
        card, copy = f"{opts.device} (smoke test; the bound assumes 0.1 TB/s)", 0.1
    header = (
        f"{card}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
        f"python {sys.version.split()[0]}"
    )
    print(header, flush=True)
    print(f"copy bandwidth: {copy:.2f} TB/s", flush=True)
    failed = []
    for name in names:
        try:
            bench_shape(name, copy, opts)
        except Exception as exc:  # report and go on with the next shape
            failed.append(name)
            NOTES.append(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            print(NOTES[-1], flush=True)
    lines = [
        header,
        f"copy bandwidth {copy:.2f} TB/s (1 GiB bf16 copy, read + write); batch 1: prompt {PROMPT}, {NEW} new tokens; "
        f"concurrent: {opts.concurrent} requests, input and output lengths uniform {opts.lengths}, seed {opts.seed}",
        "",
        "| shape | load | engine | tok/s | of bound | vs transformers | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r + ["-"] * (8 - len(r))) + " |" for r in ROWS]
    lines += ["", *NOTES]
    text = "\n".join(lines)
    print("\n" + text, flush=True)
    out = os.environ.get("OUT")
    if out:
        stem = "serve_" + "_".join(names)
        Path(out, stem + ".md").write_text(text + "\n")
        Path(out, stem + ".json").write_text(json.dumps({"header": header, "copy_tbps": copy, "rows": ROWS}))
    return 1 if failed else 0
