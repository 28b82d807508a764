"""Serving benchmark: a load generator against the OpenAI API, optionally beside transformers `generate`.

Fixed-seed synthetic requests (token-id prompts of exact lengths, forced output lengths)
are streamed to `/v1/completions` at `--request-rate` (Poisson arrivals; inf: all at once)
with at most `--concurrency` in flight. Reported: request and output-token throughput,
TTFT, TPOT (time per output token after the first), ITL (gaps between streamed chunks)
and end-to-end latency (mean, p50, p90, p99), as a Markdown table and with `--json FILE`.

    # against a running server (localhost only)
    python tools/bench_serve.py --url http://127.0.0.1:8000 --model-dir models/smollm2-135m-instruct \\
        --num-requests 16 --concurrency 16 --input-len 128 --output-len 64
    # start `minisgl-decl serve` on a free port, benchmark it, stop it (SIGTERM); everything after
    # --start-server is passed to `serve`
    python tools/bench_serve.py --num-requests 16 --concurrency 16 --baseline transformers \\
        --start-server --model models/smollm2-135m-instruct --device cpu --dtype float32
    # GPU, no checkpoint needed: random weights at real shapes, batch 1 and 64 concurrent,
    # transformers in the same run on the same card (tools/bench_serve_gpu.py); stop after 540 s
    # and print what finished; with several GPUs, the shapes on 2 of them at once
    python tools/bench_serve.py --shapes llama3-8b,qwen3-0.6b,qwen3-30b-a3b-12l --time-budget 540
    python tools/bench_serve.py --shapes llama3-8b,qwen3-0.6b,qwen3-30b-a3b-12l --time-budget 540 --parallel-gpus 2

`--baseline transformers` then runs transformers `generate` in this process on the same
prompts and lengths (same model directory, dtype and device; greedy): batch 1 and batched
(`--baseline-batch`, default: the concurrency), and prints output tok/s side by side with
the ratios. The header names the machine, date and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from bench_client import RequestResult, run_load, served_model, wait_healthy  # noqa: E402
from bench_workload import BenchArgError, LengthDist, arrival_offsets, make_workload, summary  # noqa: E402

MAX_REQUESTS = 10_000
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
START_TIMEOUT_S = 600.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000 (loopback only)")
    where.add_argument(
        "--start-server",
        nargs=argparse.REMAINDER,
        metavar="SERVE_ARGS",
        help="start `minisgl-decl serve SERVE_ARGS` on a free 127.0.0.1 port (must come last)",
    )
    where.add_argument(
        "--shapes",
        help="GPU: random-weight checkpoints at these shapes (comma-separated, tools/bench_shapes.py), "
        "each served and measured beside transformers (tools/bench_serve_gpu.py)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model directory for the tokenizer and the baseline (default: serve's --model)",
    )
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=None, help="most requests in flight (default: all)")
    p.add_argument("--request-rate", type=float, default=math.inf, help="Poisson arrivals per second (default inf)")
    p.add_argument("--input-len", default="128", help="prompt tokens: N or LO:HI uniform (default 128)")
    p.add_argument("--output-len", default="64", help="output tokens: N or LO:HI uniform (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="untimed requests sent first (default 1)")
    p.add_argument("--baseline", choices=["none", "transformers"], default="none")
    p.add_argument(
        "--baseline-batch",
        type=int,
        default=None,
        help="batch size of the batched baseline (default: the concurrency, at most --num-requests)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for the started server "
        "(OMP_NUM_THREADS) and the baseline (torch.set_num_threads); default: torch's own choice",
    )
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    from bench_serve_gpu import add_parser_args

    add_parser_args(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; BenchArgError with the reason for a bad one."""
    args = build_parser().parse_args(argv)
    if args.shapes is not None:
        return args
    if not 1 <= args.num_requests <= MAX_REQUESTS:
        raise BenchArgError(f"--num-requests must be in 1..{MAX_REQUESTS}, got {args.num_requests}")
    args.concurrency = args.num_requests if args.concurrency is None else args.concurrency
    if args.concurrency < 1:
        raise BenchArgError(f"--concurrency must be at least 1, got {args.concurrency}")
    if not (args.request_rate > 0):
        raise BenchArgError(f"--request-rate must be > 0 (or inf), got {args.request_rate}")
    if args.warmup < 0:
        raise BenchArgError(f"--warmup must be >= 0, got {args.warmup}")
    args.input_dist = LengthDist.parse(args.input_len, "--input-len")
    args.output_dist = LengthDist.parse(args.output_len, "--output-len")
    batch = args.baseline_batch if args.baseline_batch is not None else min(args.concurrency, args.num_requests)
    if batch < 1:
        raise BenchArgError(f"--baseline-batch must be at least 1, got {batch}")
    args.baseline_batch = batch
    if args.threads is not None and args.threads < 1:
        raise BenchArgError(f"--threads must be at least 1, got {args.threads}")
    if args.url is not None:
        host = urlsplit(args.url).hostname
        if host not in LOOPBACK:
            raise BenchArgError(f"--url must point at this machine (127.0.0.1, localhost or ::1), got {args.url!r}")
        args.url = args.url.rstrip("/").removesuffix("/v1")
        if args.model_dir is None:
            raise BenchArgError("--url needs --model-dir (the served model's directory: tokenizer and baseline)")
    else:
        serve = serve_namespace(args.start_server)
        if args.model_dir is None:
            if serve.model is None or not Path(serve.model).is_dir():
                raise BenchArgError("give serve a local --model DIR, or --model-dir before --start-server")
            args.model_dir = Path(serve.model)
        args.serve = serve
    return args


def serve_namespace(serve_args: list[str]) -> argparse.Namespace:
    """`serve`'s own parser on SERVE_ARGS (their model, device and dtype drive the baseline)."""
    from minisgl_decl.cli.main import build_parser as cli_parser

    if any(a == "--port" or a.startswith("--port=") or a == "--host" or a.startswith("--host=") for a in serve_args):
        raise BenchArgError("--start-server picks --host 127.0.0.1 and a free --port itself; drop them")
    try:
        return cli_parser().parse_args(["serve", *serve_args])
    except SystemExit as exc:
        raise BenchArgError(f"bad serve arguments: {' '.join(serve_args)}") from exc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m minisgl_decl.cli.main serve ...` on 127.0.0.1:<free port>; output goes to a log file."""

    def __init__(self, serve_args: list[str], threads: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench_serve-", suffix=".log", delete=False)  # noqa: SIM115
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        }
        cmd = [
            sys.executable,
            "-m",
            "minisgl_decl.cli.main",
            "serve",
            *serve_args,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.command = " ".join(cmd[1:])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        self.timeline: list[tuple[float, str]] = []  # (seconds after the start, a line of its output)
        self.healthy_s = math.nan
        self._read = 0

    def _poll_log(self) -> None:
        """Time-stamp the server's new complete output lines (to the ~0.5 s of the health poll)."""
        try:
            with open(self.log.name, "rb") as f:
                f.seek(self._read)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self._read += end + 1
        now = time.perf_counter() - self.started
        self.timeline += [(now, line.decode(errors="replace")) for line in data[:end].split(b"\n") if line.strip()]

    def start(self) -> None:
        def alive() -> bool:
            self._poll_log()
            return self.proc.poll() is None

        healthy = asyncio.run(wait_healthy(self.url, START_TIMEOUT_S, alive))
        self.healthy_s = time.perf_counter() - self.started
        self._poll_log()
        if not healthy:
            self.stop()
            raise RuntimeError(f"serve did not become healthy ({self.command}); its output:\n{self.output()}")

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return int(self.proc.returncode)


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (x{torch.cuda.device_count()})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def server_metrics(results: list[RequestResult], wall: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.completion_tokens for r in ok)
    ms = 1000.0
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "wall_s": wall,
        "request_throughput": len(ok) / wall,
        "output_tok_s": out_tokens / wall,
        "total_tok_s": (out_tokens + sum(r.prompt_len for r in ok)) / wall,
        "ttft_ms": summary([r.ttft * ms for r in ok]),
        "tpot_ms": summary([r.tpot * ms for r in ok if r.tpot is not None]),
        "itl_ms": summary([g * ms for r in ok for g in r.itl]),
        "e2e_ms": summary([r.e2e * ms for r in ok]),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def render(meta: dict[str, Any], m: dict[str, Any], baselines: list[dict[str, Any]]) -> str:
    v = meta["versions"]
    lines = [
        f"machine: {meta['machine']}; date: {meta['date']}; python {v['python']}, torch {v['torch']}, "
        f"transformers {v['transformers']}; threads: {meta['threads']}",
        f"server: {meta['server']}",
        f"workload: {meta['num_requests']} requests, input {meta['input_len']}, output {meta['output_len']}, "
        f"concurrency {meta['concurrency']}, request rate {meta['request_rate']}/s, seed {meta['seed']}",
        "",
        f"completed {m['completed']}, failed {m['failed']} in {m['wall_s']:.2f} s: "
        f"{m['request_throughput']:.3f} req/s, {m['output_tok_s']:.2f} output tok/s, "
        f"{m['total_tok_s']:.2f} total tok/s",
        "",
        "| latency (ms) | mean | p50 | p90 | p99 |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "end-to-end")):
        s = m[key]
        lines.append(f"| {label} | {s['mean']:.1f} | {s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} |")
    for err in m["errors"]:
        lines.append(f"error: {err}")
    if baselines:
        lines += [
            "",
            "| run | output tok/s | req/s | wall (s) | server / this |",
            "|---|---|---|---|---|",
            f"| minisgl-decl serve (concurrency {meta['concurrency']}) | {m['output_tok_s']:.2f} | "
            f"{m['request_throughput']:.3f} | {m['wall_s']:.2f} | 1.00x |",
        ]
        for b in baselines:
            ratio = m["output_tok_s"] / b["output_tok_s"] if b["output_tok_s"] else math.nan
            lines.append(
                f"| {b['name']} | {b['output_tok_s']:.2f} | {b['req_s']:.3f} | {b['seconds']:.2f} | {ratio:.2f}x |"
            )
    return "\n".join(lines)


def _baseline(args: argparse.Namespace, requests: list[Any]) -> list[dict[str, Any]]:
    import torch
    from bench_hf import run_baseline

    serve = getattr(args, "serve", None)
    device = serve.device if serve is not None and serve.device else ("cuda" if torch.cuda.is_available() else "cpu")
    name = (serve.dtype if serve is not None else None) or ("float32" if device == "cpu" else "bfloat16")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = run_baseline(args.model_dir, getattr(torch, name), device, requests, args.baseline_batch)
    return [
        {
            "name": f"{b.name} ({device}, {name})",
            "output_tok_s": b.output_tok_s,
            "req_s": b.req_s,
            "seconds": b.seconds,
            "output_tokens": b.output_tokens,
        }
        for b in out
    ]


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchArgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.shapes is not None:
        from bench_serve_gpu import run

        return run(args)
    import torch
    from transformers import AutoTokenizer

    threads = args.threads or f"default ({torch.get_num_threads()})"
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    requests = make_workload(tokenizer, args.num_requests, args.input_dist, args.output_dist, args.seed)
    offsets = arrival_offsets(len(requests), args.request_rate, args.seed)
    warm = make_workload(tokenizer, args.warmup, args.input_dist, args.output_dist, args.seed + 1)
    server = Server(args.start_server, args.threads) if args.start_server is not None else None
    url = server.url if server is not None else args.url
    try:
        if server is not None:
            server.start()
        model = asyncio.run(served_model(url))
        if warm:
            asyncio.run(run_load(url, model, warm, [0.0] * len(warm), 1))
        results, wall = asyncio.run(run_load(url, model, requests, offsets, args.concurrency))
    except RuntimeError as exc:  # the server did not start
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: {url}/v1/models failed ({type(exc).__name__}: {exc}); is the server running?", file=sys.stderr)
        return 1
    finally:
        code = server.stop() if server is not None else 0
    if server is not None and code != 0:
        print(f"warning: serve exited with {code} after SIGTERM; its output:\n{server.output()}", file=sys.stderr)
    metrics = server_metrics(results, wall)
    baselines = _baseline(args, requests) if args.baseline == "transformers" else []
    meta = {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": versions(),
        "server": server.command if server is not None else args.url,
        "num_requests": args.num_requests,
        "input_len": str(args.input_dist),
        "output_len": str(args.output_dist),
        "concurrency": args.concurrency,
        "request_rate": args.request_rate,
        "threads": threads,
        "seed": args.seed,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    print(render(meta, metrics, baselines))
    if args.json is not None:
        per_request = [
            {
                "prompt_len": r.prompt_len,
                "output_len": r.output_len,
                "ok": r.ok,
                "error": r.error,
                "ttft_s": r.ttft,
                "e2e_s": r.e2e,
                "itl_s": r.itl,
            }
            for r in results
        ]
        args.json.write_text(
            json.dumps(
                {"meta": meta, "server": metrics, "baselines": baselines, "requests": per_request},
                indent=1,
                allow_nan=True,
            )
        )
    return 0 if metrics["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
