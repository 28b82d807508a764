"""CPU matmul of a decode step: `F.linear` against the row-count routing of `catalogue.tp_linear.linear`.

A decode step at batch M multiplies M rows by every weight of the model once; on CPU the
weights stream from memory, and MKL's choice of kernel for ``x @ W^T`` at a few rows is
far from the best available on the same row-major weights. This times, for each M, one
pass over the SmolLM2-135M weight shapes (30 layers of qkv / o / gate_up / down and a
49152-row lm_head; random weights, ~540 MB, so every pass reads them from memory), with
`F.linear` (the baseline) and `linear`, interleaved, and checks both agree within float32
round-off first.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tools/bench_cpu_linear.py [--rows 1 2 4 8 16] [--reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from minisgl_decl.catalogue.tp_linear import linear

# (out, in) of one SmolLM2-135M layer: qkv, o, gate_up, down; then the lm_head
LAYER = ((960, 576), (576, 576), (3072, 576), (576, 1536))
HEAD = (49152, 576)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen) * i**-0.5 for _ in range(a.layers) for o, i in LAYER]
    weights.append(torch.randn(*HEAD, generator=gen) * HEAD[1] ** -0.5)
    print(f"threads {torch.get_num_threads()}, {sum(w.numel() for w in weights) * 4 / 2**20:.0f} MiB of weights")
    print("rows  F.linear ms  linear ms  speed-up  max|diff|")
    for m in a.rows:
        xs = {i: torch.randn(m, i, generator=gen) for i in {w.shape[1] for w in weights}}
        diff = max(float((linear(xs[w.shape[1]], w) - F.linear(xs[w.shape[1]], w)).abs().max()) for w in weights)
        runs: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"base": F.linear, "new": linear}
        times: dict[str, list[float]] = {k: [] for k in runs}
        with torch.inference_mode():
            for _ in range(a.reps):  # interleaved: drift on a shared machine hits both alike
                for k, fn in runs.items():
                    t0 = time.perf_counter()
                    for w in weights:
                        fn(xs[w.shape[1]], w)
                    times[k].append((time.perf_counter() - t0) * 1e3)
        base, new = statistics.median(times["base"]), statistics.median(times["new"])
        print(f"{m:4d}  {base:11.2f}  {new:9.2f}  {base / new:7.2f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
