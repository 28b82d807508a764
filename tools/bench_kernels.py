"""Benchmark the Triton kernels against torch eager, SDPA (flash) and the copy ceiling.

Run on a CUDA machine from the repo root: ``PYTHONPATH=$PWD python tools/bench_kernels.py``
(``--compare``: only the side-by-side old/candidate timings of RMSNorm grids and decode;
``--merge``: the two RMSNorm kernels side by side, as a merge into one would run them;
``--confirm``: the adopted defaults against the old code).
Checks correctness first, then times medians with ``triton.testing.do_bench`` (which also
flushes L2 between runs; inputs rotate among copies as well). Prints a markdown table last
and writes it to $OUT/bench.md when $OUT is set.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import minisgl_kernels as kernels
from minisgl_kernels import attention_launch, norm_launch, reference
from minisgl_kernels.options import AttentionOptions

DEV = "cuda"
BF16 = torch.bfloat16
ROWS: list[list[str]] = []


def bench_plain(fn: Callable[[], object]) -> float:
    """Median time of fn in microseconds, with do_bench (L2 flushed before each call)."""
    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")) * 1e3


def bench(fn: Callable[[], object], reps: int = 30) -> float:
    """Median GPU time of fn in microseconds, from CUDA-graph replays of many calls.

    Graphs take the host launch cost out (as in a serving engine's decode step); fn
    rotates among input copies larger than L2, so the cache does not flatter.
    """
    for _ in range(3):  # compile and autotune outside the capture
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    calls = max(4, min(64, int(3.0 / max(start.elapsed_time(end), 1e-3))))
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
    del graph
    return sorted(times)[len(times) // 2]


def rotating(make: Callable[[], tuple], nbytes: int) -> Callable[[], tuple]:
    """Enough copies of the inputs to exceed 4x the L2; each call returns the next copy."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    sets = [make() for _ in range(max(1, min(8, -(-4 * l2 // nbytes))))]
    state = {"i": 0}

    def nxt() -> tuple:
        state["i"] = (state["i"] + 1) % len(sets)
        return sets[state["i"]]

    return nxt


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = rel_err(got, want)
    ok = err < tol and not torch.isnan(got).any()
    print(f"correctness {name}: rel err {err:.2e} (tol {tol:g}) {'OK' if ok else 'FAIL'}")
    if not ok:
        raise SystemExit(f"correctness check failed: {name}")


def row(kernel: str, shape: str, unit: str, work: float, ours: float, others: dict[str, float], note: str) -> None:
    """work: bytes (unit TB/s) or FLOPs (unit TFLOP/s); times in us."""

    def rate(us: float) -> str:
        return f"{work / us / 1e6:.2f}" if us == us else "-"

    cols = [kernel, shape, unit, f"{ours:.1f}", rate(ours)]
    for key in ("torch eager", "SDPA flash", "copy ceiling"):
        us = others.get(key, float("nan"))
        cols.append("-" if us != us else f"{rate(us)} ({us:.1f} us)")
    ROWS.append([*cols, note])
    print(" | ".join([*cols, note]))


def copy_ceiling() -> float:
    """Large device-to-device copy, bytes read + written; the better of two timings."""
    src = torch.randn(1 << 29, device=DEV, dtype=BF16)  # 1 GiB
    dst = torch.empty_like(src)
    plain, graph = bench_plain(lambda: dst.copy_(src)), bench(lambda: dst.copy_(src))
    tbs = 2 * src.numel() * 2 / min(plain, graph) / 1e6
    print(f"copy ceiling: {tbs:.2f} TB/s (1 GiB -> 1 GiB; do_bench {plain:.0f} us, graph {graph:.0f} us)")
    return tbs


def bench_norm(m: int, h: int, fused: bool, ceiling: float) -> None:
    w = torch.randn(h, device=DEV, dtype=BF16)
    nbytes = m * h * 2
    nxt = rotating(
        lambda: (
            torch.randn(m, h, device=DEV, dtype=BF16),
            torch.randn(m, h, device=DEV, dtype=BF16),
            torch.empty(m, h, device=DEV, dtype=BF16),
        ),
        3 * nbytes,
    )
    x, r, _ = nxt()
    if fused:
        y, s = kernels.add_rmsnorm(x, r, w, 1e-6)
        wy, ws = reference.add_rmsnorm(x, r, w, 1e-6)
        check(f"add_rmsnorm {m}x{h}", torch.cat([y, s]), torch.cat([wy, ws]), 5e-3)
        ours = bench(lambda: kernels.add_rmsnorm(*nxt()[:2], w, 1e-6))
        eager = bench(lambda: reference.add_rmsnorm(*nxt()[:2], w, 1e-6))
        work, name = 4 * nbytes, "add+RMSNorm"
    else:
        check(f"rmsnorm {m}x{h}", kernels.rmsnorm(x, w, 1e-6), reference.rmsnorm(x, w, 1e-6), 5e-3)
        ours = bench(lambda: kernels.rmsnorm(nxt()[0], w, 1e-6))
        eager = bench(lambda: reference.rmsnorm(nxt()[0], w, 1e-6))
        work, name = 2 * nbytes, "RMSNorm"

    def same_size_copy() -> None:  # one (fused: two) M x H copies, the same bytes as the kernel
        a, b, c = nxt()
        c.copy_(a)
        if fused:
            c.copy_(b)

    copy_us = bench(same_size_copy)
    pct = work / ours / 1e6 / ceiling * 100
    row(
        name,
        f"M={m} H={h} bf16",
        "TB/s",
        work,
        ours,
        {"torch eager": eager, "copy ceiling": copy_us},
        f"{pct:.0f}% of large copy, {copy_us / ours * 100:.0f}% of same-size copy",
    )


def sweep_norm(m: int, h: int) -> None:
    """Warps/rows-per-program variants of the RMSNorm kernel (printed, not tabled)."""
    from minisgl_kernels.norm_jit import rmsnorm_kernel

    w = torch.randn(h, device=DEV, dtype=BF16)
    nxt = rotating(lambda: (torch.randn(m, h, device=DEV, dtype=BF16),), m * h * 2)
    out = torch.empty(m, h, device=DEV, dtype=BF16)
    for block_m, warps in ((1, 4), (1, 8), (1, 16), (2, 8), (4, 16)):

        def run(block_m: int = block_m, warps: int = warps) -> None:
            x = nxt()[0]
            rmsnorm_kernel[(triton.cdiv(m, block_m),)](
                x,
                x,
                w,
                out,
                out,
                h,
                h,
                h,
                h,
                m,
                h,
                1e-6,
                0.0,
                BLOCK_M=block_m,
                BLOCK_N=triton.next_power_of_2(h),
                HAS_RESIDUAL=False,
                CAST_BEFORE_WEIGHT=True,
                EVICT="",
                PREFETCH=False,
                num_warps=warps,
            )

        us = bench(run)
        print(
            f"sweep rmsnorm M={m} H={h} rows/program={block_m} warps={warps}: {us:.1f} us, "
            f"{2 * m * h * 2 / us / 1e6:.2f} TB/s"
        )


def bench_prefill(b: int, hq: int, hkv: int, n: int, d: int, eager: bool = False) -> None:
    scale = d**-0.5
    q = torch.randn(b * n, hq, d, device=DEV, dtype=BF16)
    k, v = (torch.randn(b * n, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
    cu = torch.arange(0, b * n + 1, n, device=DEV, dtype=torch.int32)
    qs, ks, vs = (t.view(b, n, -1, d).transpose(1, 2) for t in (q, k, v))
    if hkv != hq:  # SDPA flash baseline gets pre-expanded KV (expansion not timed)
        ks, vs = (t.repeat_interleave(hq // hkv, dim=1) for t in (ks, vs))

    def sdpa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)

    ours_fn = lambda: kernels.extend_attention(q, k, v, cu, opts=AttentionOptions(scale), max_seqlen_q=n)  # noqa: E731
    check(f"prefill b{b} h{hq}/{hkv} n{n}", ours_fn(), sdpa().transpose(1, 2).reshape(b * n, hq, d), 1e-2)
    flops = 4.0 * b * hq * d * n * n / 2
    ours, others = bench(ours_fn), {"SDPA flash": bench(sdpa)}
    if eager:
        with sdpa_kernel(SDPBackend.MATH):  # 60 ms a call: do_bench, no graph
            others["torch eager"] = bench_plain(
                lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
            )
    cfg = attention_launch._extend_tuned.best_config
    row(
        "prefill causal",
        f"B={b} Hq={hq} Hkv={hkv} N={n} D={d}",
        "TFLOP/s",
        flops,
        ours,
        others,
        f"{others['SDPA flash'] / ours:.2f}x SDPA; cfg {cfg}",
    )


def bench_extend_prefix(b: int, hq: int, hkv: int, prefix: int, new: int, d: int) -> None:
    scale = d**-0.5
    q = torch.randn(b * new, hq, d, device=DEV, dtype=BF16)
    k, v = (torch.randn(b * new, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
    kc, vc = (torch.randn(b * prefix, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
    slots = torch.randperm(b * prefix, device=DEV)
    cu = torch.arange(0, b * new + 1, new, device=DEV, dtype=torch.int32)
    pi = torch.arange(0, b * prefix + 1, prefix, device=DEV, dtype=torch.int32)
    args = (q, k, v, cu, kc, vc, pi, slots)
    got = kernels.extend_attention(*args, opts=AttentionOptions(scale), max_seqlen_q=new)
    check(
        "extend+prefix",
        got[: new * 1],
        reference.extend_attention(
            q[:new], k[:new], v[:new], cu[:2], kc, vc, pi[:2], slots, opts=AttentionOptions(scale)
        ),
        1e-2,
    )
    ours = bench(lambda: kernels.extend_attention(*args, opts=AttentionOptions(scale), max_seqlen_q=new))
    flops = 4.0 * b * hq * d * new * (prefix + new / 2)
    row(
        "extend (paged prefix)",
        f"B={b} prefix={prefix} new={new} Hq={hq} Hkv={hkv}",
        "TFLOP/s",
        flops,
        ours,
        {},
        "prefix read through shuffled slots",
    )


def bench_decode(b: int, ctx: int, hq: int, hkv: int, d: int, shuffled: bool) -> None:
    scale, group = d**-0.5, hq // hkv
    kv_bytes = 2 * b * ctx * hkv * d * 2

    def make() -> tuple:
        kc, vc = (torch.randn(b * ctx, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
        slots = torch.randperm(b * ctx, device=DEV) if shuffled else torch.arange(b * ctx, device=DEV)
        q = torch.randn(b, hq, d, device=DEV, dtype=BF16)
        kd, vd = (c[slots].view(b, ctx, hkv, d).transpose(1, 2).contiguous() for c in (kc, vc))
        return q, kc, vc, slots.to(torch.int32), kd, vd

    nxt = rotating(make, 2 * kv_bytes)
    ip = torch.arange(0, b * ctx + 1, ctx, device=DEV, dtype=torch.int32)

    def ours_fn(s: tuple) -> torch.Tensor:
        return kernels.decode_attention(s[0], s[1], s[2], ip, s[3], opts=AttentionOptions(scale))

    def flash(s: tuple) -> torch.Tensor:  # q heads of a KV head folded into the query length
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = F.scaled_dot_product_attention(s[0].view(b, hkv, group, d), s[4], s[5], scale=scale)
        return o.reshape(b, hq, d)

    def eager(s: tuple) -> torch.Tensor:
        att = (s[0].view(b, hkv, group, d) @ s[4].transpose(-1, -2)).float() * scale
        return (att.softmax(-1).to(BF16) @ s[5]).reshape(b, hq, d)

    s = nxt()
    check(f"decode b{b} ctx{ctx}", ours_fn(s), flash(s), 1e-2)
    ours = bench(lambda: ours_fn(nxt()))
    others = {"torch eager": bench(lambda: eager(nxt())), "SDPA flash": bench(lambda: flash(nxt()))}
    splits = attention_launch.default_num_splits(b, hkv, torch.device(DEV))
    cfg = decode_config(splits)
    row(
        "decode paged",
        f"B={b} ctx={ctx} Hq={hq} Hkv={hkv} D={d} {'shuffled' if shuffled else 'contig'}",
        "TB/s (KV)",
        kv_bytes,
        ours,
        others,
        f"{others['SDPA flash'] / ours:.2f}x SDPA; splits {splits}; cfg {cfg}",
    )


def decode_config(splits: int) -> object:
    """The autotuned config of the decode kernel the default path uses."""
    fused = attention_launch.fused_decode_enabled(splits)
    return getattr(attention_launch._fused_tuned if fused else attention_launch._decode_tuned, "best_config", None)


def sweep_decode(b: int, ctx: int, splits: list[int]) -> None:
    """Time decode at several split counts (printed, not tabled) to tune the default."""
    hq, hkv, d = 32, 4, 128
    kc, vc = (torch.randn(b * ctx, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
    slots = torch.randperm(b * ctx, device=DEV).to(torch.int32)
    q = torch.randn(b, hq, d, device=DEV, dtype=BF16)
    ip = torch.arange(0, b * ctx + 1, ctx, device=DEV, dtype=torch.int32)
    kv_bytes = 2 * b * ctx * hkv * d * 2
    for ns in splits:
        us = bench(
            lambda ns=ns: kernels.decode_attention(q, kc, vc, ip, slots, opts=AttentionOptions(0.1), num_splits=ns)
        )
        cfg = decode_config(ns)
        print(f"sweep decode B={b} ctx={ctx} splits={ns}: {us:.1f} us, {kv_bytes / us / 1e6:.2f} TB/s; {cfg}")


def profile() -> None:
    """One launch of each kernel for ncu (run with MINISGL_KERNELS_AUTOTUNE=0)."""
    b, ctx, hq, hkv, d = 32, 4096, 32, 4, 128
    kc, vc = (torch.randn(b * ctx, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
    slots = torch.randperm(b * ctx, device=DEV).to(torch.int32)
    q = torch.randn(b, hq, d, device=DEV, dtype=BF16)
    ip = torch.arange(0, b * ctx + 1, ctx, device=DEV, dtype=torch.int32)
    kernels.decode_attention(q, kc, vc, ip, slots, opts=AttentionOptions(0.1))
    x = torch.randn(4096, 4096, device=DEV, dtype=BF16)
    kernels.rmsnorm(x, x[0], 1e-6)
    torch.cuda.synchronize()


# (label, norm_launch overrides): the old default first and last (its spread is the noise)
OLD_NORM: dict[str, int | bool] = {"programs_per_sm": 0, "evict_first": False}
NORM_VARIANTS: list[tuple[str, dict[str, int | bool]]] = [
    ("one program per row (old)", OLD_NORM),
    ("per row, evict_first", {"programs_per_sm": 1 << 20, "evict_first": True, "prefetch": False}),
    ("persistent 4/SM", {"programs_per_sm": 4, "evict_first": False, "prefetch": False}),
    ("persistent 8/SM", {"programs_per_sm": 8, "evict_first": False, "prefetch": False}),
    ("persistent 8/SM evict", {"programs_per_sm": 8, "evict_first": True, "prefetch": False}),
    ("persistent 2/SM prefetch", {"programs_per_sm": 2, "evict_first": False, "prefetch": True}),
    ("persistent 4/SM prefetch", {"programs_per_sm": 4, "evict_first": False, "prefetch": True}),
    ("persistent 8/SM prefetch", {"programs_per_sm": 8, "evict_first": False, "prefetch": True}),
    ("persistent 4/SM prefetch evict", {"programs_per_sm": 4, "evict_first": True, "prefetch": True}),
    ("one program per row (old, again)", OLD_NORM),
]
CONFIRM_NORM: list[tuple[str, dict[str, int | bool]]] = [  # --confirm: old vs the new defaults
    ("old", OLD_NORM),
    ("new default", {}),
    ("old, again", OLD_NORM),
    ("new default, again", {}),
]
CMP: list[str] = []


def compare_norm(
    m: int, h: int, fused: bool, ceiling: float, variants: list[tuple[str, dict[str, int | bool]]]
) -> None:
    """Old and candidate RMSNorm grids in one run, timed as bench_norm times kernels.rmsnorm."""
    w = torch.randn(h, device=DEV, dtype=BF16)
    nbytes = m * h * 2
    nxt = rotating(
        lambda: (torch.randn(m, h, device=DEV, dtype=BF16), torch.randn(m, h, device=DEV, dtype=BF16)), 2 * nbytes
    )
    work = (4 if fused else 2) * nbytes
    for label, kw in variants:

        def call(x: torch.Tensor, r: torch.Tensor, kw: dict = kw) -> torch.Tensor:
            y, s = torch.empty_like(x), (torch.empty_like(x) if fused else None)
            norm_launch.rmsnorm_triton(
                x,
                w,
                1e-6,
                offset=0.0,
                cast_before_weight=True,
                out=y,
                residual=r if fused else None,
                residual_out=s,
                **kw,
            )
            return y

        x, r = nxt()
        want = reference.add_rmsnorm(x, r, w, 1e-6)[0] if fused else reference.rmsnorm(x, w, 1e-6)
        check(f"{label} {m}", call(x, r), want, 5e-3)
        us = bench(lambda call=call: call(*nxt()))
        tbs = work / us / 1e6
        CMP.append(
            f"| {'add+RMSNorm' if fused else 'RMSNorm'} M={m} | {label} | {us:.1f} | {tbs:.2f} | "
            f"{tbs / ceiling * 100:.1f}% |"
        )
        print(CMP[-1])


def compare_decode(b: int, ctx: int, shuffled: bool) -> None:
    """Two-launch (old) and fused decode alternately, with SDPA flash, in one run."""
    hq, hkv, d = 32, 4, 128
    scale, group, kv_bytes = d**-0.5, hq // hkv, 2 * b * ctx * hkv * d * 2

    def make() -> tuple:
        kc, vc = (torch.randn(b * ctx, hkv, d, device=DEV, dtype=BF16) for _ in range(2))
        slots = torch.randperm(b * ctx, device=DEV) if shuffled else torch.arange(b * ctx, device=DEV)
        q = torch.randn(b, hq, d, device=DEV, dtype=BF16)
        kd, vd = (c[slots].view(b, ctx, hkv, d).transpose(1, 2).contiguous() for c in (kc, vc))
        return q, kc, vc, slots.to(torch.int32), kd, vd

    nxt = rotating(make, 2 * kv_bytes)
    ip = torch.arange(0, b * ctx + 1, ctx, device=DEV, dtype=torch.int32)

    def ours(s: tuple, fused: bool) -> torch.Tensor:
        out = torch.empty_like(s[0])
        attention_launch.decode_attention_triton(
            s[0], s[1], s[2], ip, s[3], opts=AttentionOptions(scale, None, None), num_splits=None, out=out, fused=fused
        )
        return out

    def flash(s: tuple) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = F.scaled_dot_product_attention(s[0].view(b, hkv, group, d), s[4], s[5], scale=scale)
        return o.reshape(b, hq, d)

    s = nxt()
    for fused in (False, True):
        check(f"decode b{b} ctx{ctx} fused={fused}", ours(s, fused), flash(s), 1e-2)
    times: dict[str, list[float]] = {"two launches (old)": [], "fused": []}
    for _ in range(2):
        for label, fused in (("two launches (old)", False), ("fused", True)):
            times[label].append(bench(lambda fused=fused: ours(nxt(), fused)))
    sdpa = bench(lambda: flash(nxt()))
    splits = attention_launch.default_num_splits(b, hkv, torch.device(DEV))
    cfgs = [getattr(t, "best_config", None) for t in (attention_launch._decode_tuned, attention_launch._fused_tuned)]
    print(f"decode B={b} ctx={ctx}: configs old {cfgs[0]}, fused {cfgs[1]}")
    for label, ts in times.items():
        CMP.append(
            f"| decode B={b} ctx={ctx} {'shuffled' if shuffled else 'contig'} ({splits} splits) | "
            f"{label} | {min(ts):.1f} ({max(ts):.1f}) | {kv_bytes / min(ts) / 1e6:.2f} | "
            f"{sdpa / min(ts):.3f}x SDPA ({sdpa:.1f} us) |"
        )
        print(CMP[-1])


def compare(confirm: bool) -> None:
    """Side by side, same run: RMSNorm grids and two-launch vs fused decode (--compare);
    --confirm: the adopted defaults against the old code, at 1 to 64 decode splits."""
    head = card_header(with_l2=False)
    ceiling = copy_ceiling()
    keep = {(128, 1, 4, 2), (128, 0, 4, 2), (64, 1, 4, 3), (64, 1, 4, 2)}  # earlier winners: less compiling
    subset = [
        c
        for c in attention_launch._DECODE_CONFIGS
        if (c.kwargs["BLOCK_N"], c.kwargs["PREFETCH_SLOTS"], c.num_warps, c.num_stages) in keep
    ]
    attention_launch._decode_tuned.configs = attention_launch._fused_tuned.configs = subset
    decode = (
        ((32, 4096, True), (16, 8192, True), (10, 8192, True), (1, 32768, True))
        if confirm
        else ((32, 4096, True), (32, 4096, False), (1, 32768, True), (128, 1024, True))
    )
    for b, ctx, shuffled in decode:
        compare_decode(b, ctx, shuffled)
        torch.cuda.empty_cache()
    for m in (4096, 16384):
        for fused in (False,) if confirm else (False, True):
            compare_norm(m, 4096, fused, ceiling, CONFIRM_NORM if confirm else NORM_VARIANTS)
            torch.cuda.empty_cache()
    lines = [
        head,
        f"copy ceiling {ceiling:.2f} TB/s",
        "",
        "| kernel | variant | us (decode: best (worst) of 2) | TB/s | vs |",
        "|---|---|---|---|---|",
        *CMP,
    ]
    publish("\n".join(lines), "compare.md")


def card_header(with_l2: bool) -> str:
    """The table's first line (card, SMs, L2 when asked, date, versions), printed as the run starts."""
    props = torch.cuda.get_device_properties(0)
    l2 = f", L2 {props.L2_cache_size >> 20} MiB" if with_l2 else ""
    head = (
        f"card: {props.name} ({props.multi_processor_count} SMs{l2}); date {datetime.date.today()}; "
        f"torch {torch.__version__}; triton {triton.__version__}"
    )
    print(head)
    return head


def publish(table: str, name: str) -> None:
    """Print a result table and write it to $OUT/`name` when $OUT is set (the device call's outputs)."""
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], name), "w") as f:
            f.write(table + "\n")
    print("\n" + table)


def merge_norm(m: int, h: int, fused: bool, ceiling: float) -> None:
    """The per-tile kernel (`rmsnorm_kernel`) vs the loop kernel (`rmsnorm_persistent_kernel`) launched
    with one program per tile, i.e. what a merge into one kernel would run; alternating, same shapes."""
    from minisgl_kernels import norm_launch
    from minisgl_kernels._util import next_pow2

    w = torch.randn(h, device=DEV, dtype=BF16)
    nbytes = m * h * 2
    nxt = rotating(
        lambda: (torch.randn(m, h, device=DEV, dtype=BF16), torch.randn(m, h, device=DEV, dtype=BF16)), 2 * nbytes
    )
    work = (4 if fused else 2) * nbytes
    block_n = next_pow2(h)
    block_m = max(1, min(64, 2048 // block_n))
    warps = 4 if block_n <= 2048 else (8 if block_n <= 8192 else 16)
    evict = norm_launch.EVICT_FIRST_RESIDUAL if fused else norm_launch.EVICT_FIRST_PLAIN

    from minisgl_kernels.norm_jit import rmsnorm_kernel

    def old(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        s = torch.empty_like(x) if fused else y
        rmsnorm_kernel[(triton.cdiv(m, block_m),)](
            x, r if fused else x, w, y, s, h, h, h, h, m, h, 1e-6, 0.0,
            BLOCK_M=block_m, BLOCK_N=block_n, HAS_RESIDUAL=fused, CAST_BEFORE_WEIGHT=True, num_warps=warps,
        )  # fmt: skip
        return y

    def new(x: torch.Tensor, r: torch.Tensor, hint: bool = False) -> torch.Tensor:
        y, s = torch.empty_like(x), (torch.empty_like(x) if fused else None)
        norm_launch.rmsnorm_triton(
            x, w, 1e-6, offset=0.0, cast_before_weight=True, out=y,
            residual=r if fused else None, residual_out=s, evict_first=hint, programs_per_sm=1 << 20,
        )  # fmt: skip
        return y

    variants = [("rmsnorm_kernel (per tile)", old), ("loop kernel, one tile each, no hint", new)]
    if evict:
        variants.append(("loop kernel, one tile each, evict_first (plain default)", lambda x, r: new(x, r, True)))
    x, r = nxt()
    for label, fn in variants:
        got = fn(x, r)
        want = old(x, r)
        if not torch.equal(got, want):
            raise SystemExit(f"merge: {label} differs from rmsnorm_kernel at M={m} fused={fused}")
    for rnd in range(2):
        for label, fn in variants:
            us = bench(lambda fn=fn: fn(*nxt()))
            tbs = work / us / 1e6
            CMP.append(
                f"| {'add+RMSNorm' if fused else 'RMSNorm'} M={m} H={h} | {label}{' (again)' if rnd else ''} | "
                f"{us:.2f} | {tbs:.2f} | {tbs / ceiling * 100:.1f}% |"
            )
            print(CMP[-1], flush=True)


def merge() -> None:
    head = card_header(with_l2=False)
    ceiling = copy_ceiling()
    for m in (1, 64, 4096, 16384):
        for fused in (False, True):
            merge_norm(m, 4096, fused, ceiling)
            torch.cuda.empty_cache()
    lines = [
        head,
        f"copy ceiling {ceiling:.2f} TB/s; outputs bit-identical between the kernels (checked first)",
        "",
        "| kernel | variant | us | TB/s | of copy |",
        "|---|---|---|---|---|",
        *CMP,
    ]
    publish("\n".join(lines), "merge.md")


def main() -> None:
    head = card_header(with_l2=True)
    ceiling = copy_ceiling()
    sweep_norm(4096, 4096)
    for m in (4096, 16384):
        for fused in (False, True):
            bench_norm(m, 4096, fused, ceiling)
            torch.cuda.empty_cache()
    bench_prefill(4, 32, 32, 4096, 128, eager=True)
    torch.cuda.empty_cache()
    bench_prefill(4, 32, 8, 4096, 128)
    bench_prefill(16, 32, 8, 1024, 128)
    bench_extend_prefix(4, 32, 8, 3584, 512, 128)
    sweep_decode(32, 4096, [2, 3, 4])
    sweep_decode(1, 32768, [32, 64])
    for b, ctx in ((32, 4096), (1, 32768)):
        for shuffled in (True, False):
            bench_decode(b, ctx, 32, 4, 128, shuffled)
            torch.cuda.empty_cache()
    lines = [
        head,
        f"copy ceiling {ceiling:.2f} TB/s (bytes read + written)",
        "",
        "| kernel | shape | unit | ours (us) | ours | torch eager | SDPA flash | same-size copy | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in ROWS]
    publish("\n".join(lines), "bench.md")


if __name__ == "__main__":
    import sys

    if "--profile" in sys.argv:
        profile()
    elif "--merge" in sys.argv:
        merge()
    elif "--compare" in sys.argv or "--confirm" in sys.argv:
        compare("--confirm" in sys.argv)
    else:
        main()
