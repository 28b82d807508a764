"""Tensor parallelism through torch.distributed: one process per rank.

- `GroupComm` is the `Comm` the catalogue layers call (all_reduce, all_gather along
  the last dim), over a torch.distributed process group: NCCL on CUDA, gloo on CPU. With
  MINISGL_P2P_ALLREDUCE_MAX_BYTES set, on GPUs that reach each other peer-to-peer, small
  all-reduces take a one-shot kernel over symmetric memory instead (`p2p_allreduce.py`).
- `rank_env()` reads the torchrun contract (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `MASTER_ADDR`, `MASTER_PORT`), so every entry point runs the same under `torchrun`
  and under `launch`.
- `launch(cmd, world)` is a tiny torchrun for one host: it starts `world` copies of a
  command with that environment on a free localhost port, shows only rank 0's output,
  and stops the others as soon as one fails (so no rank waits forever in a collective).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UserError
from . import p2p_allreduce

COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int


def rank_env() -> RankEnv | None:
    """This process's place in a launched group, or None when not launched (plain CLI)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UserError("RANK / WORLD_SIZE / LOCAL_RANK must be integers") from None
    return RankEnv(rank, world, local)


class GroupComm:
    """Collectives over a torch.distributed process group (the default group if None)."""

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        device: str | torch.device = "cpu",
        control: dist.ProcessGroup | None = None,
        p2p: p2p_allreduce.P2PAllReduce | None = None,
    ) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.device = torch.device(device)  # where collectives' tensors live (NCCL: this rank's GPU)
        # host-side messages (the engine's step broadcast): a gloo group, so a worker's host receives
        # the next step while its GPU still runs this one (None: `group`)
        self.control = control
        # small all-reduces over peer-to-peer loads (None: NCCL / gloo for every size)
        self.p2p = p2p

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        if self.p2p is not None and self.p2p.fits(t):
            return self.p2p.all_reduce(t)
        dist.all_reduce(t, group=self.group)
        return t

    def all_gather_last_dim(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim=-1)

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def broadcast_bytes(self, data: bytes | None, max_len: int = 4096) -> bytes:
        """Rank 0's `data` on every rank (a path, a small message): raw bytes, no pickle.

        Data longer than `max_len` raises the same `UserError` on every rank (rank 0 still
        takes part in the broadcast, sending only the length, so no rank is left waiting).
        """
        buf = torch.zeros(max_len + 8, dtype=torch.uint8)
        if self.rank == 0:
            if data is None:
                raise ValueError("broadcast_bytes: rank 0 must pass the data")
            buf[:8] = torch.tensor(list(len(data).to_bytes(8, "little")), dtype=torch.uint8)
            if len(data) <= max_len:
                buf[8 : 8 + len(data)] = torch.tensor(list(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        dist.broadcast(buf, src=0, group=self.group)
        buf = buf.cpu()
        n = int.from_bytes(bytes(buf[:8].tolist()), "little")
        if n > max_len:
            raise UserError(
                f"rank 0's message is {n} bytes; broadcast_bytes carries at most {max_len} "
                "(pass a larger max_len on every rank)"
            )
        return bytes(buf[8 : 8 + n].tolist())


def init_group(env: RankEnv, device: str | torch.device = "cpu") -> GroupComm:
    """Join the default process group: NCCL for CUDA devices (this rank's GPU), gloo for CPU."""
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=dev if dev.type == "cuda" else None,
        )
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)  # host-side step messages
    p2p = None
    if dev.type == "cuda" and env.world_size > 1:
        world_group = dist.group.WORLD
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        p2p, why = p2p_allreduce.setup(world_group, dev, local_world) if world_group is not None else (None, "")
        if env.rank == 0:
            how = (
                f"one-shot peer-to-peer up to {p2p.max_bytes} bytes, NCCL above" if p2p is not None else f"NCCL ({why})"
            )
            print(f"tp: all-reduce: {how}", file=sys.stderr, flush=True)
    return GroupComm(device=dev, control=control, p2p=p2p)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(cmd: list[str], world: int, *, quiet_others: bool = True) -> int:
    """Run `cmd` as ranks 0..world-1 of one group on this host; returns rank 0's exit code.

    Ranks > 0 print nothing (their stderr is kept and shown only if one of them fails
    while rank 0 did not say why).
    """
    port = str(free_port())
    threads = str(max(1, (os.cpu_count() or 1) // world))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path | None] = []
    tmp = tempfile.TemporaryDirectory(prefix="minisgl-ranks-")
    try:
        for r in range(world):
            env = {
                **os.environ,
                "RANK": str(r),
                "WORLD_SIZE": str(world),
                "LOCAL_RANK": str(r),
                "LOCAL_WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            }
            env.setdefault("OMP_NUM_THREADS", threads)
            env.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast on shared hosts
            env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
            env.setdefault("NVSHMEM_DISABLE_NVLS", "1")
            log = Path(tmp.name) / f"rank{r}.log" if r and quiet_others else None
            logs.append(log)
            out = subprocess.DEVNULL if log else None
            err = log.open("wb") if log else None
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err))
            if err is not None:
                err.close()
        codes = _wait(procs)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        _stop(procs)
    try:
        return _verdict(codes, logs)
    finally:
        tmp.cleanup()


def _verdict(codes: list[int], logs: list[Path | None]) -> int:
    """Rank 0's exit code; if rank 0 did not fail by itself, report the first rank that did."""
    if codes[0] > 0:
        return codes[0]  # rank 0 failed and said why
    ranks = range(1, len(codes))
    others = [r for r in ranks if codes[r] > 0] or [r for r in ranks if codes[r]]
    if not others:
        if codes[0] < 0:
            print(f"rank 0 was stopped by signal {-codes[0]}", file=sys.stderr)
            return 1
        return 0
    first = others[0]
    log = logs[first]
    text = log.read_text(errors="replace") if log is not None and log.exists() else ""
    print(f"rank {first} of {len(codes)} failed (exit code {codes[first]}):\n{text}", file=sys.stderr, end="")
    return codes[first] if codes[first] > 0 else 1


def _wait(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """Wait for all; as soon as one fails, stop the others (they would block in a collective)."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [int(c) for c in codes if c is not None]
        if any(c not in (None, 0) for c in codes):
            time.sleep(0.5)  # let the others finish printing the same error
            _stop(procs)
            return [int(p.wait()) for p in procs]
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
