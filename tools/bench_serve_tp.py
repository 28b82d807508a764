"""`serve --tp N` on one host's GPUs against `--tp 1`: the same greedy text, and the speed-up.

    PYTHONPATH=$PWD python tools/bench_serve_tp.py [--tp 2] [--shape llama3-8b] [--text-shape qwen3-0.6b]

1. Text: a random-weight checkpoint of `--text-shape` is served in float32 at TP=1 and TP=N
   (and in bfloat16, reported separately: there the all-reduce's different summation order can
   flip a near-tie of a random model); 8 fixed prompts, greedy, 48 tokens, EOS ignored, sent
   together; the texts must be identical.
2. Speed: `--shape` (bf16) served at TP=1 and TP=N (CUDA graphs and overlap at their
   defaults; with `--no-graph-row` also TP=N without graphs; with `--p2p-row` also TP=N with
   small all-reduces on the one-shot P2P kernel, MINISGL_P2P_ALLREDUCE_MAX_BYTES=1048576): decode tok/s at batch 1
   (prompt 128, 256 tokens, 1 / median TPOT over `--b1-requests`) and `--concurrent`
   requests (lengths 100..1024, seed 0; 0 skips them).

Prints one table last (and writes it to $OUT/serve_tp.md when $OUT is set).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_serve
import bench_serve_gpu as g
import httpx
import torch
from bench_shapes import build_checkpoint
from bench_workload import LengthDist, make_workload

from minisgl_decl.runtime.p2p_allreduce import MAX_BYTES_ENV as P2P_ENV

LINES: list[str] = []


def say(line: str) -> None:
    LINES.append(line)
    print(line, flush=True)


async def _texts(url: str, model: str, prompts: list[list[int]], n: int) -> list[str]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:

        async def one(p: list[int]) -> str:
            body = {"model": model, "prompt": p, "max_tokens": n, "temperature": 0.0, "ignore_eos": True}
            resp = await client.post(f"{url}/v1/completions", json=body)
            resp.raise_for_status()
            return str(resp.json()["choices"][0]["text"])

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def text_check(shape: str, tp: int, dtype: str, device: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix=f"tp-text-{shape}-"))
    try:
        ckpt = build_checkpoint(shape, directory, device)
        gen = torch.Generator().manual_seed(3)
        prompts = [torch.randint(1, ckpt.vocab, (int(n),), generator=gen).tolist() for n in range(20, 100, 10)]
        texts: dict[int, list[str]] = {}
        for size in (1, tp):
            server = g._serve(ckpt, ["--tp", str(size), "--dtype", dtype], 8, device)
            try:
                texts[size] = asyncio.run(_texts(server.url, asyncio.run(g.served_model(server.url)), prompts, 48))
            finally:
                server.stop()
        same = sum(a == b for a, b in zip(texts[1], texts[tp], strict=True))
        firsts = []
        for a, b in zip(texts[1], texts[tp], strict=True):
            wa, wb = a.split(), b.split()
            firsts.append(next((i for i, (x, y) in enumerate(zip(wa, wb, strict=False)) if x != y), len(wa)))
        say(
            f"text {shape} {dtype}: TP={tp} gives the TP=1 text for {same} of {len(prompts)} prompts "
            f"(48 greedy tokens each; first differing token per prompt: {firsts})"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _all_reduce_line(output: str) -> str:
    """What the server said about its all-reduce path (`tp: all-reduce: ...`), if anything."""
    lines = [line for line in output.splitlines() if line.startswith("tp: all-reduce:")]
    return lines[-1][len("tp: all-reduce:") :].strip() if lines else "-"


def speed(
    shape: str,
    tp: int,
    concurrent: int,
    no_graph_row: bool,
    device: str,
    lengths: str,
    p2p_row: bool = False,
    b1_requests: int = 3,
) -> list[list[str]]:
    directory = Path(tempfile.mkdtemp(prefix=f"tp-speed-{shape}-"))
    rows = []
    try:
        ckpt = build_checkpoint(shape, directory, device)
        from transformers import AutoTokenizer

        dist = LengthDist.parse(lengths, "--lengths")
        reqs = make_workload(AutoTokenizer.from_pretrained(directory), concurrent, dist, dist, 0) if concurrent else []
        runs: list[tuple[int, list[str], dict[str, str], str]] = [(1, [], {}, ""), (tp, [], {}, "")]
        if p2p_row:
            runs.append((tp, [], {P2P_ENV: str(1 << 20)}, " one-shot P2P"))
        if no_graph_row:
            runs.append((tp, ["--no-cuda-graph"], {}, " no graphs"))
        base = None
        for size, extra, env, what in runs:
            label = f"TP={size}{what}"
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                server = g._serve(ckpt, ["--tp", str(size), *extra], max(concurrent, 8), device)
            except RuntimeError as exc:
                say(f"{shape} {label}: serve did not start: {str(exc)[-1500:]}")
                continue
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            try:
                model = asyncio.run(g.served_model(server.url))
                b1 = g._batch1(server.url, model, ckpt.vocab, b1_requests)
                many = g._concurrent(server.url, model, reqs) if reqs else None
            finally:
                server.stop()
            path = _all_reduce_line(server.output()) if size > 1 else "-"
            base = base or (b1, many["output_tok_s"] if many else 1.0)
            rows.append(
                [
                    shape,
                    label,
                    path,
                    f"{b1:.1f}",
                    f"{b1 / base[0]:.2f}x",
                    f"{many['output_tok_s']:.1f}" if many else "-",
                    f"{many['output_tok_s'] / base[1]:.2f}x" if many else "-",
                    f"{many['ttft_p50']:.0f} / {many['ttft_p99']:.0f}" if many else "-",
                    f"{many['itl_p50']:.1f} / {many['itl_p99']:.1f}" if many else "-",
                ]
            )
            print("row: " + " | ".join(rows[-1]), flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--text-shape", default="qwen3-0.6b")
    p.add_argument("--concurrent", type=int, default=64)
    p.add_argument("--no-graph-row", action="store_true", help="also TP=N with --no-cuda-graph")
    p.add_argument("--p2p-row", action="store_true", help="also TP=N with the one-shot P2P all-reduce")
    p.add_argument("--b1-requests", type=int, default=3, help="batch-1 requests (median TPOT)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test the tool")
    p.add_argument("--lengths", default="100:1024", help="concurrent requests' input and output lengths")
    p.add_argument("--text-dtypes", default="float32,bfloat16", help="dtypes of the text check")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds a server may take to start")
    opts = p.parse_args()
    import transformers

    from minisgl_decl.parity.run import quiet_transformers

    quiet_transformers()
    bench_serve.START_TIMEOUT_S = opts.start_timeout
    card = (
        f"{torch.cuda.device_count()} x {torch.cuda.get_device_properties(0).name}, "
        f"NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
        if opts.device == "cuda"
        else "cpu (smoke test)"
    )
    header = (
        f"{card}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}"
    )
    say(header)
    for dtype in [d for d in opts.text_dtypes.split(",") if d]:
        try:
            text_check(opts.text_shape, opts.tp, dtype, opts.device)
        except Exception as exc:
            say(f"text {opts.text_shape} {dtype}: FAILED {type(exc).__name__}: {str(exc)[-1500:]}")
    rows = speed(
        opts.shape,
        opts.tp,
        opts.concurrent,
        opts.no_graph_row,
        opts.device,
        opts.lengths,
        opts.p2p_row,
        opts.b1_requests,
    )
    table = [
        "",
        "| shape | run | all-reduce | batch 1 tok/s | vs TP=1 | "
        f"{opts.concurrent} concurrent tok/s | vs TP=1 | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
    text = "\n".join([*LINES, *table, "", *g.NOTES])
    print("\n" + text, flush=True)
    out: Any = os.environ.get("OUT")
    if out:
        Path(out, "serve_tp.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
