"""CPU decode attention of a batch: the K/V gather by `index_select` against advanced indexing.

`minisgl_kernels.reference.decode_attention` copies every request's K and V into a padded
`[B, Lmax, Hkv, D]` batch per layer, then runs SDPA. This times, at the demo model's
attention shapes (9 query heads, 3 KV heads, head_dim 64) and a pool of the engine's CPU
default size, the whole call as it is now (`index_select`) and the same call with the
gather written `k_cache[idx]` (the baseline: what it was before), interleaved, after
checking both give identical outputs. Requests' slots are scattered over the pool.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python tools/bench_cpu_decode_attention.py [--batch 16] [--context 192]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minisgl_kernels import reference
from minisgl_kernels.options import AttentionOptions

OPTS = AttentionOptions(scale=64**-0.5)


def indexed(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, ip: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The baseline: `reference.decode_attention` with the gather as advanced indexing."""
    layout = reference._decode_layout(ip, slots, q.device)
    assert layout is not None
    return reference._attend_padded(
        q.unsqueeze(1),
        kc[layout.idx],
        vc[layout.idx],
        layout.q_pos,
        layout.k_len,
        OPTS,
        mask=layout.mask(None),
    ).squeeze(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--context", type=int, default=192)
    ap.add_argument("--pool", type=int, default=14134)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    kc = torch.randn(a.pool, 3, 64, generator=gen)
    vc = torch.randn(a.pool, 3, 64, generator=gen)
    print(f"threads {torch.get_num_threads()}, context {a.context}, 30 layers' worth of calls per rep")
    print("batch  advanced-index ms  index_select ms  speed-up")
    for b in a.batch:
        q = torch.randn(b, 9, 64, generator=gen)
        lens = [a.context - (i % 3) for i in range(b)]  # unequal lengths: the masked path
        slots = torch.randperm(a.pool, generator=gen)[: sum(lens)].to(torch.int32)
        ip = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        new = reference.decode_attention(q, kc, vc, ip, slots, OPTS)
        if not torch.equal(new, indexed(q, kc, vc, ip, slots)):
            raise SystemExit("the two gathers disagree")
        runs = {"base": indexed, "new": lambda *t: reference.decode_attention(*t, OPTS)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(a.reps // 30 + 1):  # interleaved: drift on a shared machine hits both alike
            for k, fn in runs.items():
                t0 = time.perf_counter()
                for _ in range(30):
                    fn(q, kc, vc, ip, slots)
                times[k].append((time.perf_counter() - t0) * 1e3)
        base, new_ms = statistics.median(times["base"]), statistics.median(times["new"])
        print(f"{b:5d}  {base:17.2f}  {new_ms:15.2f}  {base / new_ms:7.2f}x")


if __name__ == "__main__":
    main()
