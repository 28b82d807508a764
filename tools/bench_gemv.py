"""Few-row linear layers: the Triton GEMV (minisgl_kernels.gemv) against torch matmul (cuBLAS).

Run on a CUDA machine from the repo root::

    PYTHONPATH=$PWD python tools/bench_gemv.py

Shapes: the linear layers of Qwen3-0.6B and Llama-3-8B (one rank at TP 1; qkv, o,
gate_up, down, LM head), rows M = 1, 2, 4, 8, 16, bf16. For every row both outputs are
checked first against the float32 reference (within 2 bf16 ulps; "check" names one that is
not), then each side is timed as CUDA-graph replays of many calls over rotating weight copies (together over 3x the L2,
so the weights come from memory, as in a decode step); us per call is the median of the
replays divided by the calls. TB/s counts the weight, x and y bytes; "% copy" is against the
device-to-device copy bandwidth measured in the same run (tools/gpu_copy_bandwidth.py).
"auto" is what ``MINISGL_KERNELS_GEMV=auto`` picks for the shape in this process (its own
start-up timing, minisgl_kernels/gemv_choice.py). Prints a markdown table last (also to
$OUT/bench_gemv.md when $OUT is set) with, per model and M, the linear time of one decode
step (every layer's four projections, and the LM head once) for each choice.

``--device cpu --tiny``: a smoke run of the same code on tiny shapes (the GEMV in Triton's
CPU interpreter, no graphs, host timings that mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class Model:
    name: str
    hidden: int
    q: int  # query features (heads x head_dim)
    kv: int  # key (= value) features
    ffn: int
    vocab: int
    layers: int

    def shapes(self) -> list[tuple[str, int, int]]:
        """(layer, N, K) of each linear map."""
        return [
            ("qkv", self.q + 2 * self.kv, self.hidden),
            ("o", self.hidden, self.q),
            ("gate_up", 2 * self.ffn, self.hidden),
            ("down", self.hidden, self.ffn),
            ("lm_head", self.vocab, self.hidden),
        ]


MODELS = [
    Model("Qwen3-0.6B", 1024, 2048, 1024, 3072, 151936, 28),
    Model("Llama-3-8B", 4096, 4096, 1024, 14336, 128256, 32),
]
TINY = [Model("tiny", 64, 64, 32, 96, 300, 2)]
ROWS = [1, 2, 4, 8, 16]
TINY_ROWS = [1, 3, 16]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU smoke run)")
    p.add_argument("--reps", type=int, default=30, help="timed graph replays per measurement")
    p.add_argument("--models", nargs="*", default=None, help="model names to run (default: all)")
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    import torch
    import triton

    import minisgl_kernels as kernels
    from minisgl_kernels import gemv_choice, gemv_launch, reference

    dev = torch.device(args.device)
    dtype = torch.bfloat16
    cuda = dev.type == "cuda"
    models = TINY if args.tiny else MODELS
    if args.models:
        models = [m for m in models if m.name in args.models]
    rows_list = TINY_ROWS if args.tiny else ROWS

    if cuda:
        from gpu_copy_bandwidth import copy_tbps

        copy = copy_tbps(str(dev))
        l2 = torch.cuda.get_device_properties(dev).L2_cache_size
        card = torch.cuda.get_device_name(dev)
    else:
        copy, l2, card = float("nan"), 1 << 20, "cpu (Triton interpreter)"

    def timed_us(calls: list[Callable[[], object]]) -> float:
        """Median us per call: CUDA-graph replays of ``calls`` (each a call on its own weights)."""
        if not cuda:
            t0 = time.perf_counter()
            for fn in calls:
                fn()
            return (time.perf_counter() - t0) * 1e6 / len(calls)
        for fn in calls[:2]:  # compile / autotune outside the capture
            fn()
        torch.cuda.synchronize(dev)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for fn in calls:
                fn()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(args.reps):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / len(calls))
        del graph
        return statistics.median(times)

    lines = []
    step: dict[tuple[str, int], list[float]] = {}  # (model, M) -> [cublas, gemv, auto, best] us per step
    torch.manual_seed(0)
    for model in models:
        for layer, n, k in model.shapes():
            wbytes = n * k * 2
            copies = max(2, min(16, -(-3 * l2 // wbytes)))
            weights = [torch.randn(n, k, device=dev, dtype=dtype) / k**0.5 for _ in range(copies if cuda else 1)]
            per_call = 1 if layer == "lm_head" else model.layers
            for m in rows_list:
                x = torch.randn(m, k, device=dev, dtype=dtype)
                out = torch.empty(m, n, device=dev, dtype=dtype)
                want = reference.gemv(x, weights[0]).float()
                ulp = 2 * torch.finfo(dtype).eps * want.abs().clamp_min(1.0)
                ours = kernels.gemv(x, weights[0], out=out, backend="triton").float()
                theirs = torch.nn.functional.linear(x, weights[0]).float()
                check = "ok"
                for who, got in (("gemv", ours), ("torch", theirs)):
                    if not bool(((got - want).abs() <= ulp).all()):
                        check = f"{who} off by {(got - want).abs().max().item():.3g}"
                        print(f"MISMATCH {model.name} {layer} M={m}: {check}", flush=True)
                config = getattr(gemv_launch._TUNED[gemv_launch.block_m_for(m)], "best_config", None)
                reps = max(copies, 8) if cuda else 2
                cycle = [weights[i % len(weights)] for i in range(reps)]
                t_ours = timed_us([partial(kernels.gemv, x, w, out=out, backend="triton") for w in cycle])
                t_torch = timed_us([partial(torch.nn.functional.linear, x, w) for w in cycle])
                auto = "-"
                if cuda:
                    os.environ[gemv_choice.GEMV_ENV] = "auto"
                    auto = "gemv" if gemv_choice.use_gemv(x, weights[0]) else "torch"
                    key = (gemv_choice.rows_bucket(m), n, k, dtype, False, dev.index or 0)
                    timing = gemv_choice.decisions().get(key)
                    if timing is not None:  # its own start-up timing: gemv us / torch us
                        auto += f" ({timing[1]:.1f}/{timing[2]:.1f})"
                t_auto = t_ours if auto.startswith("gemv") else t_torch
                acc = step.setdefault((model.name, m), [0.0, 0.0, 0.0, 0.0])
                for i, t in enumerate((t_torch, t_ours, t_auto, min(t_ours, t_torch))):
                    acc[i] += per_call * t
                nbytes = wbytes + 2 * m * (k + n)
                tb_torch, tb_ours = nbytes / t_torch / 1e6, nbytes / t_ours / 1e6
                cfg = "-" if config is None or not cuda else _config_text(config)
                lines.append(
                    f"| {model.name} | {layer} | {n} | {k} | {m} | {t_torch:.2f} | {t_ours:.2f} | "
                    f"{t_torch / t_ours:.2f}x | {tb_torch:.2f} | {tb_ours:.2f} | {100 * tb_ours / copy:.0f}% | "
                    f"{auto} | {cfg} | {check} |"
                )
                print(lines[-1], flush=True)
            del weights

    table = [
        f"GEMV vs torch matmul, {card}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"torch {torch.__version__}, triton {triton.__version__}; copy bandwidth {copy:.2f} TB/s (same run); bf16; "
        "us per call from CUDA-graph replays over rotating weights",
        "",
        "| model | layer | N | K | M | torch us | gemv us | speed-up | torch TB/s | gemv TB/s | gemv % copy "
        "| auto (its timing gemv/torch us) | gemv config | check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *lines,
        "",
        "Linear time of one decode step (layers x (qkv + o + gate_up + down) + LM head), us:",
        "",
        "| model | M | torch | gemv | auto | best of two |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {m} | {a:.0f} | {b:.0f} | {c:.0f} | {d:.0f} |" for (name, m), (a, b, c, d) in step.items()),
    ]
    text = "\n".join(table)
    print("\n" + text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir, "bench_gemv.md").write_text(text + "\n")


def _config_text(config: object) -> str:
    kw = getattr(config, "kwargs", {})
    dot = "dot " if kw.get("USE_DOT") else ""
    return f"{dot}N{kw.get('BLOCK_N')} K{kw.get('BLOCK_K')} w{getattr(config, 'num_warps', '?')}"


if __name__ == "__main__":
    main()
