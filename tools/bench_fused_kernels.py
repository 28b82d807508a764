"""Benchmark the fused rotary, MoE and activation-and-multiply kernels against today's torch ops.

Run on a CUDA machine from the repo root: ``PYTHONPATH=$PWD python tools/bench_fused_kernels.py``
(``--quick``: fewer shapes). Every row first checks the fused result against the torch
reference (relative Frobenius error printed), then times:

* ``graph us``: median GPU time per call from CUDA-graph replays of back-to-back calls
  (the launch cost taken out, as in a captured decode step);
* ``eager us``: host wall time per call of an eager loop (launch and Python cost included:
  what an uncaptured step pays).

Baselines, same process: rope = the catalogue's rope before this kernel (``old_rope``: cos/sin
recomputed from inv_freq every call, ``rotate_half`` in torch) followed by ``kernels.store_kv``; MoE = the
per-expert loop (``kernels.reference.fused_moe``, a ``.tolist()`` host sync, so eager only);
act = ``F.silu(gate) * up``. Bounds: weight bytes of the routed experts over the copy
bandwidth measured here (1 GiB device copy, bytes read + written). Prints a markdown table
last and writes it to $OUT/fused.md when $OUT is set.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections.abc import Callable

import torch
import triton
from gpu_copy_bandwidth import copy_tbps
from torch.nn import functional as F

import minisgl_kernels as kernels
from minisgl_kernels import reference
from minisgl_kernels.options import KVStore, RopeOptions

DEV = "cuda"
BF16 = torch.bfloat16
ROWS: list[list[str]] = []


def graph_us(fn: Callable[[], object], reps: int = 20) -> float:
    """Median GPU microseconds per call, from CUDA-graph replays of several calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    calls = max(2, min(64, int(2.0 / max(start.elapsed_time(end), 1e-3))))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def eager_us(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Median host wall microseconds per call over batches of eager calls (synchronised)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = time.perf_counter() - t0
    n = max(1, min(200, int(0.05 / max(once, 1e-6))))
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6 / n)
    return sorted(times)[len(times) // 2]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = out.double(), ref.double()
    if torch.isnan(o).any():
        return float("nan")
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


def row(*cells: object) -> None:
    ROWS.append([c if isinstance(c, str) else f"{c:.1f}" if isinstance(c, float) else str(c) for c in cells])
    print(" | ".join(ROWS[-1]), flush=True)


def fmt(x: float) -> str:
    return f"{x:.1f}"


# --- rope ------------------------------------------------------------------------------


def old_rope(
    q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, inv: torch.Tensor, scaling: float, rotary_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The catalogue's rope before the fused kernel (kept here as the baseline): cos/sin
    recomputed from inv_freq on every call, rotate-half in torch ops of the model dtype."""

    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        half = rotary_dim // 2
        x1, x2 = rot[..., :half], rot[..., half:]
        c, s = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
        rotated = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
        return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated

    freqs = pos.float()[:, None] * inv.to(pos.device)[None, :]
    cos, sin = freqs.cos() * scaling, freqs.sin() * scaling
    return rotate(q, cos, sin), rotate(k, cos, sin)


def bench_rope(name: str, hq: int, hkv: int, d: int, tokens: int) -> None:
    from minisgl_decl.catalogue.rotary import rope_frequencies
    from minisgl_decl.config.rope import RopeConfig

    inv, scaling, rotary_dim = rope_frequencies(RopeConfig(type="default", theta=500000.0), d)
    inv = inv.to(DEV)

    def old(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return old_rope(q, k, pos, inv, scaling, rotary_dim)

    table = kernels.rope_table(inv, scaling, 8192)
    gen = torch.Generator(device=DEV).manual_seed(tokens)
    qkv = torch.randn(tokens, (hq + 2 * hkv) * d, device=DEV, dtype=BF16, generator=gen)
    q, k, v = (t.view(tokens, -1, d) for t in qkv.split([hq * d, hkv * d, hkv * d], dim=-1))
    pos = torch.randint(0, 8192, (tokens,), device=DEV, generator=gen)
    slots = torch.randperm(tokens * 4, device=DEV, generator=gen)[:tokens]
    kc = torch.zeros(tokens * 4, hkv, d, device=DEV, dtype=BF16)
    vc = torch.zeros_like(kc)
    # correctness: fused (table, in-kernel) against the reference, from the same inputs
    want_q, want_k = q.clone(), k.clone()
    kernels.apply_rope(want_q, want_k, pos, table, inv, RopeOptions(scaling), backend="torch")
    errs = []
    for tab in (table, table[:0]):
        gq, gk = q.clone(), k.clone()
        kc.zero_()
        kernels.apply_rope(gq, gk, pos, tab, inv, RopeOptions(scaling, store=KVStore(v, kc, vc, slots)))
        torch.cuda.synchronize()
        errs.append(max(rel_err(gq, want_q), rel_err(gk, want_k), rel_err(kc[slots], want_k)))
    old_q, old_k = old(q, k, pos)
    err_old = max(rel_err(old_q, want_q), rel_err(old_k, want_k))

    def today() -> None:
        _, rk = old(q, k, pos)
        kernels.store_kv(rk, v, kc, vc, slots)

    def fused() -> None:
        kernels.apply_rope(q, k, pos, table, inv, RopeOptions(scaling, store=KVStore(v, kc, vc, slots)))

    def fused_no_table() -> None:
        kernels.apply_rope(q, k, pos, table[:0], inv, RopeOptions(scaling, store=KVStore(v, kc, vc, slots)))

    def split() -> None:
        kernels.apply_rope(q, k, pos, table, inv, RopeOptions(scaling))
        kernels.store_kv(k, v, kc, vc, slots)

    t = {
        n: (graph_us(f), eager_us(f))
        for n, f in (
            ("today", today),
            ("fused", fused),
            ("in-kernel cos/sin", fused_no_table),
            ("rope + store_kv", split),
        )
    }
    base_g, base_e = t["today"]
    for n, (g, e) in t.items():
        row(
            "rope+store",
            f"{name} T={tokens}",
            n,
            fmt(g),
            fmt(e),
            f"{base_g / g:.2f}x",
            f"{base_e / e:.2f}x",
            f"err {errs[0]:.1e} / in-kernel {errs[1]:.1e} / today {err_old:.1e}" if n == "fused" else "",
        )


# --- act and mul -----------------------------------------------------------------------


def bench_act(tokens: int, ffn: int) -> None:
    gen = torch.Generator(device=DEV).manual_seed(tokens)
    x = torch.randn(tokens, 2 * ffn, device=DEV, dtype=BF16, generator=gen) * 3
    out = torch.empty(tokens, ffn, device=DEV, dtype=BF16)
    err = rel_err(kernels.act_and_mul(x, "silu", out=out), reference.act_and_mul(x, "silu"))
    exact = torch.equal(out, F.silu(x[:, :ffn]) * x[:, ffn:])

    def today() -> torch.Tensor:
        gate, up = x.split(ffn, dim=-1)
        return F.silu(gate) * up

    t = {
        n: (graph_us(f), eager_us(f))
        for n, f in (("today", today), ("fused", lambda: kernels.act_and_mul(x, "silu", out=out)))
    }
    bytes_moved = x.numel() * 2 + out.numel() * 2
    for n, (g, e) in t.items():
        row(
            "silu*up",
            f"T={tokens} ffn={ffn}",
            n,
            fmt(g),
            fmt(e),
            f"{t['today'][0] / g:.2f}x",
            f"{t['today'][1] / e:.2f}x",
            f"{bytes_moved / g / 1e6:.2f} TB/s; err {err:.1e}; bit-equal {exact}"
            if n == "fused"
            else f"{bytes_moved / g / 1e6:.2f} TB/s",
        )


# --- MoE -------------------------------------------------------------------------------


class MoEShape:
    def __init__(self, name: str, experts: int, top_k: int, dim: int, ffn: int) -> None:
        self.name, self.experts, self.top_k, self.dim, self.ffn = name, experts, top_k, dim, ffn
        gen = torch.Generator(device=DEV).manual_seed(experts)
        self.gate_up = torch.randn(experts, 2 * ffn, dim, device=DEV, dtype=BF16, generator=gen) * dim**-0.5
        self.down = torch.randn(experts, dim, ffn, device=DEV, dtype=BF16, generator=gen) * ffn**-0.5
        self.router = torch.randn(experts, dim, device=DEV, dtype=BF16, generator=gen) * dim**-0.5


def bench_moe(shape: MoEShape, tokens: int, copy: float) -> None:
    gen = torch.Generator(device=DEV).manual_seed(tokens)
    x = torch.randn(tokens, shape.dim, device=DEV, dtype=BF16, generator=gen)
    probs = F.softmax(F.linear(x, shape.router), dim=-1, dtype=torch.float)
    weights, ids = torch.topk(probs, shape.top_k, dim=-1)
    weights = (weights / weights.sum(-1, keepdim=True)).to(BF16)
    args = (x, shape.gate_up, shape.down, weights, ids, "silu")
    want = reference.fused_moe(*args)
    got = kernels.fused_moe(*args)
    torch.cuda.synchronize()
    err = rel_err(got, want)
    used = int(torch.unique(ids).numel())
    weight_bytes = used * 3 * shape.dim * shape.ffn * 2
    flops = 2 * tokens * shape.top_k * 3 * shape.dim * shape.ffn
    loop_e = eager_us(lambda: reference.fused_moe(*args))
    fused_g = graph_us(lambda: kernels.fused_moe(*args))
    fused_e = eager_us(lambda: kernels.fused_moe(*args))
    bound = weight_bytes / (copy * 1e12) * 1e6
    label = f"{shape.name} T={tokens}"
    note = f"{used} experts, {weight_bytes / 1e6:.0f} MB weights; bound {bound:.1f} us at copy BW"
    row("moe", label, "loop (today)", "-", fmt(loop_e), "-", "1.00x", f"{flops / loop_e / 1e6:.1f} TFLOP/s")
    row(
        "moe",
        label,
        "fused",
        fmt(fused_g),
        fmt(fused_e),
        "-",
        f"{loop_e / fused_e:.2f}x",
        f"err {err:.1e}; graph {weight_bytes / fused_g / 1e6:.2f} TB/s, {flops / fused_g / 1e6:.1f} TFLOP/s; {note}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    header = (
        f"{props.name} ({props.multi_processor_count} SMs), {datetime.date.today()}, torch {torch.__version__}, "
        f"triton {triton.__version__}"
    )
    print(header, flush=True)
    copy = copy_tbps()
    print(f"copy bandwidth: {copy:.2f} TB/s", flush=True)
    for name, hq, hkv, d in (("llama3-8b", 32, 8, 128), ("qwen3-0.6b", 16, 8, 128)):
        for tokens in (1, 64) if opts.quick else (1, 64, 4096):
            bench_rope(name, hq, hkv, d, tokens)
    for tokens in (1, 64, 4096):
        bench_act(tokens, 14336)
    shapes = [MoEShape("qwen3-30b-a3b", 128, 8, 2048, 768), MoEShape("mixtral-8x7b", 8, 2, 4096, 14336)]
    for shape in shapes:
        for tokens in (1, 64) if opts.quick else (1, 16, 64, 512, 4096):
            bench_moe(shape, tokens, copy)
        del shape.gate_up, shape.down
        torch.cuda.empty_cache()
    lines = [
        header,
        f"copy bandwidth {copy:.2f} TB/s",
        "",
        "| op | shape | variant | graph us | eager us | graph speed-up | eager speed-up | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in ROWS]
    text = "\n".join(lines)
    print("\n" + text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fused.md"), "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
