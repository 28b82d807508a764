"""All-reduce latency on this host's GPUs: NCCL vs the one-shot peer-to-peer path
(`minisgl_decl/runtime/p2p_allreduce.py`), as a TP decode step issues them: 64 back-to-back
all-reduces of one size captured in a CUDA graph, the graph replayed `--replays` times and
timed with CUDA events (median replay / 64 = microseconds per all-reduce). bfloat16.

    python tools/diag_allreduce.py [--tp 2] [--json out.json]

Starts its own ranks (one process per GPU) through `minisgl_decl.runtime.distributed.launch`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minisgl_decl.runtime.distributed import init_group, launch, rank_env, shutdown  # noqa: E402
from minisgl_decl.runtime.p2p_allreduce import MAX_BYTES_ENV, P2PAllReduce  # noqa: E402

SIZES = (8192, 16384, 65536, 262144, 524288, 1 << 20, 4 << 20)
CALLS = 64


def timed_graph(body: Callable[[], None], replays: int) -> float:
    """Median microseconds of one replay of a graph holding `body`."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        dist.barrier()
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(times)


def rank_main(args: argparse.Namespace) -> int:
    env = rank_env()
    assert env is not None
    comm = init_group(env, "cuda")
    rows = []
    for nbytes in SIZES:
        x = torch.randn(nbytes // 2, device=comm.device).to(torch.bfloat16)
        row: dict[str, object] = {"bytes": nbytes}

        def nccl(x: torch.Tensor = x) -> None:
            for _ in range(CALLS):
                dist.all_reduce(x)

        row["nccl_us"] = timed_graph(nccl, args.replays) / CALLS
        p2p = comm.p2p
        if p2p is not None and p2p.fits(x):

            def one_shot(x: torch.Tensor = x, p2p: P2PAllReduce = p2p) -> None:
                for _ in range(CALLS):
                    p2p.all_reduce(x)

            row["p2p_us"] = timed_graph(one_shot, args.replays) / CALLS
        rows.append(row)
    if comm.rank == 0:
        result = {
            "card": torch.cuda.get_device_name(),
            "world": comm.size,
            "p2p": comm.p2p is not None,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "rows": rows,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"{comm.size} x {result['card']}, NCCL {result['nccl']}, bf16, {CALLS} all-reduces per graph replay")
        print("| bytes | NCCL us | one-shot P2P us | speed-up |")
        print("|---|---|---|---|")
        for r in rows:
            p = r.get("p2p_us")
            n = float(r["nccl_us"])  # type: ignore[arg-type]
            ps = f"{float(p):.2f}" if p is not None else "-"  # type: ignore[arg-type]
            sp = f"{n / float(p):.2f}x" if p is not None else "-"  # type: ignore[arg-type]
            print(f"| {r['bytes']} | {n:.2f} | {ps} | {sp} |")
    shutdown()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args()
    os.environ.setdefault(MAX_BYTES_ENV, str(1 << 20))  # the one-shot path is opt-in: on here
    if rank_env() is not None:
        return rank_main(args)
    return launch([sys.executable, __file__, *sys.argv[1:]], args.tp)


if __name__ == "__main__":
    sys.exit(main())
