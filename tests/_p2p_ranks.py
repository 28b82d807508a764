"""Rank program of tests/test_p2p_allreduce_gpu.py (run under `launch`, one process per GPU).

Checks `GroupComm.all_reduce` with the one-shot peer-to-peer path against NCCL's
`dist.all_reduce` and a float64 sum: fresh random inputs per rank and call, float32 and
bfloat16, sizes from 16 bytes to the P2P limit and past it (NCCL then), 50 back-to-back
calls (a rank must not overwrite its buffer while a peer still reads it), and a chain of
all-reduces captured in a CUDA graph and replayed on new inputs. Rank 0 writes a JSON report;
any rank that sees a wrong sum exits 1.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from minisgl_decl.runtime.distributed import init_group, rank_env, shutdown


def main() -> int:
    env = rank_env()
    if env is None:
        raise SystemExit("run under minisgl_decl.runtime.distributed.launch")
    comm = init_group(env, "cuda")
    dev = comm.device
    problems: list[str] = []
    report: dict[str, object] = {"p2p": comm.p2p is not None, "world": comm.size}
    gen = torch.Generator(device=dev).manual_seed(1234 + comm.rank)

    def rand(n: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(n, generator=gen, device=dev, dtype=torch.float32).to(dtype)

    def nccl_sum(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    def exact_sum(x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x, dtype=torch.float64) for _ in range(comm.size)]
        dist.all_gather(parts, x.double())
        return torch.stack(parts).sum(0)

    limit = comm.p2p.max_bytes if comm.p2p is not None else 1 << 20
    checked = 0
    for dtype in (torch.float32, torch.bfloat16):
        size = dtype.itemsize
        for nbytes in (16, 4096, 8192, 65536, limit, 2 * limit):
            n = nbytes // size
            x = rand(n, dtype)
            before = x.clone()
            got = comm.all_reduce(x.clone())
            want = nccl_sum(x)
            if not torch.equal(x, before):
                problems.append(f"{dtype} {nbytes} B: the input changed")
            if not torch.equal(got, want):
                gap = (got.float() - want.float()).abs().max()
                problems.append(f"{dtype} {nbytes} B: differs from NCCL by {gap:.3e}")
            err = (got.double() - exact_sum(x)).abs().max().item()
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            if err > tol * max(1.0, exact_sum(x).abs().max().item()):
                problems.append(f"{dtype} {nbytes} B: off the float64 sum by {err:.3e}")
            checked += 1
    # back to back: 50 calls on fresh data, compared after all of them ran
    xs = [rand(4096, torch.bfloat16) for _ in range(50)]
    outs = [comm.all_reduce(x) for x in xs]
    wrong = sum(not torch.equal(o, nccl_sum(x)) for o, x in zip(outs, xs, strict=True))
    if wrong:
        problems.append(f"back-to-back: {wrong} of 50 sums differ from NCCL")
    # a chain of all-reduces inside a captured CUDA graph, replayed on new inputs
    static = rand(4096, torch.float32)

    def chain(h: torch.Tensor) -> torch.Tensor:
        for _ in range(16):
            h = comm.all_reduce(h * 0.5) + 1.0
        return h

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain(static)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(static)
    for k in range(3):
        static.copy_(rand(4096, torch.float32))
        graph.replay()
        h = static.clone()
        for _ in range(16):
            h = nccl_sum(h * 0.5) + 1.0
        if not torch.equal(out, h):
            problems.append(f"graph replay {k}: differs from NCCL by {(out - h).abs().max():.3e}")
    torch.cuda.synchronize()
    report.update({"checked_sizes": checked, "problems": problems})
    if comm.rank == 0 and len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    shutdown()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
