"""Loader benchmark: our plan executor vs a raw `safetensors` read of the same files (TP=1).

Generates a Llama-shaped F32 checkpoint (default 2.2 GiB, 1 GiB shards), warms the page
cache, then measures each reader in a fresh subprocess (best of --repeat), printing a
Markdown table for docs/perf.md:

- `safetensors get_tensor + clone`: every tensor read into memory the process owns (the
  raw read a loader must do at least once); the throughput baseline;
- `safetensors load_file (mmap, touched)`: zero-copy memory map, every element summed
  (pages stay file-backed; shown for reference, it is not a load into owned memory);
- `minisgl-decl loader (params kept)`: our executor, all parameters kept in host memory;
- `minisgl-decl loader (streamed, dropped)`: our executor, each parameter dropped after it
  is filled (what host memory looks like when the target is a GPU).

Peak RSS growth is VmHWM after minus before reading, in the measuring process (not
ru_maxrss: a child inherits that from its parent's size at fork).

With `--device cuda` every reader places the tensors on the GPU (safetensors' own
`device="cuda"` path is the baseline) and the RSS column is host memory growth.

    python tools/bench_load.py [--gb 2.2] [--dir /tmp/minisgl-bench-ckpt] [--keep] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from make_checkpoint import make_checkpoint, sized  # noqa: E402

MEASURE = r"""
import gc, glob, json, sys, time
import torch
mode, d, device = sys.argv[1], sys.argv[2], sys.argv[4]
files = sorted(glob.glob(d + "/*.safetensors"))
if mode.startswith("ours"):
    from minisgl_decl.pipeline import compile_spec
    from minisgl_decl.plan import execute
    plan = compile_spec(sys.argv[3], d, 1).plan
else:
    from safetensors import safe_open
    from safetensors.torch import load_file
sys.path.insert(0, "tools")  # cwd is the repository root
from peak_rss import peak_rss
gc.collect()
before = peak_rss()
t0 = time.perf_counter()
nbytes, keep = 0, []
if mode == "raw_clone":
    for f in files:
        with safe_open(f, "pt", device=device) as h:
            for k in h.keys():
                t = h.get_tensor(k)
                t = t.clone() if device == "cpu" else t
                nbytes += t.numel() * t.element_size()
                keep.append(t)
elif mode == "raw_load_file":
    for f in files:
        for t in load_file(f, device=device).values():
            t.sum()
            nbytes += t.numel() * t.element_size()
            keep.append(t)
else:
    for name, t in execute.materialise(plan.ranks[0], d, device=device):
        nbytes += t.numel() * t.element_size()
        if mode == "ours_keep":
            keep.append(t)
        del t
if device != "cpu":
    torch.cuda.synchronize()
dt = time.perf_counter() - t0
after = peak_rss()
print(json.dumps({"seconds": dt, "bytes": nbytes, "growth": after - before}))
"""

MODES = [
    ("raw_clone", "safetensors get_tensor + clone (baseline)"),
    ("raw_load_file", "safetensors load_file (mmap, every element touched)"),
    ("ours_keep", "minisgl-decl loader, TP=1 (params kept)"),
    ("ours_stream", "minisgl-decl loader, TP=1 (streamed, each param dropped)"),
]


def _measure(mode: str, d: Path, repeat: int, device: str) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        p = subprocess.run(
            [sys.executable, "-c", MEASURE, mode, str(d), str(ROOT / "specs/llama.yaml"), device],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(p.stdout))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "growth": max(r["growth"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.2)
    ap.add_argument("--dir", default="/tmp/minisgl-bench-ckpt")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    ap.add_argument("--device", default="cpu", help="target device: cpu, or cuda (safetensors loads to cuda too)")
    a = ap.parse_args()
    d = Path(a.dir)
    sizes = sized(a.gb)
    try:
        if not (d / "config.json").exists():
            make_checkpoint(d, **sizes, shard_bytes=1 << 30)
        files = sorted(d.glob("*.safetensors"))
        total = sum(f.stat().st_size for f in files)
        for f in files:  # warm the page cache
            with f.open("rb") as fh:
                while fh.read(64 << 20):
                    pass
        from safetensors import safe_open

        largest = 0
        for f in files:
            with safe_open(str(f), "pt") as h:
                for k in h.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    sl = h.get_slice(k)
                    n = 4
                    for x in sl.get_shape():
                        n *= x
                    largest = max(largest, n)
        modes = MODES if a.device == "cpu" else [m for m in MODES if m[0] != "ours_stream"]
        results = {m: _measure(m, d, a.repeat, a.device) for m, _ in modes}
    finally:
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)
    import safetensors
    import torch

    base = results["raw_clone"]["bytes"] / results["raw_clone"]["seconds"]
    print(f"target device: {a.device}" + (f" ({torch.cuda.get_device_name()})" if a.device != "cpu" else ""))
    print(
        f"checkpoint: Llama F32 {sizes}, {total / 2**30:.2f} GiB in {len(files)} shards, "
        f"largest tensor {largest / 2**20:.1f} MiB"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, safetensors {safetensors.__version__}, "
        f"{platform.machine()}, {platform.system()} {platform.release()}"
    )
    print()
    print("| reader | GiB/s | vs baseline | peak RSS growth | growth / largest tensor | growth / checkpoint |")
    print("|---|---|---|---|---|---|")
    for m, label in MODES:
        if m not in results:
            continue
        r = results[m]
        rate = r["bytes"] / r["seconds"]
        print(
            f"| {label} | {rate / 2**30:.2f} | {rate / base:.0%} | {r['growth'] / 2**20:.0f} MiB | "
            f"{r['growth'] / largest:.2f} | {r['growth'] / total:.2f} |"
        )


if __name__ == "__main__":
    main()
