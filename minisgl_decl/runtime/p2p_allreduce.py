"""One-shot all-reduce of small messages over GPU peer-to-peer loads (torch symmetric memory).

At batch 1 a tensor-parallel decode step all-reduces a few KB twice per layer, and NCCL's
per-call latency (its ring protocol, proxy handshakes) dominates the time of such a message.
Here each rank owns one buffer allocated with `torch.distributed._symmetric_memory.empty` and
rendezvous'ed once with the group, so every rank can load every peer's buffer directly
(NVLink / PCIe P2P). An all-reduce is one kernel (`symm_mem::one_shot_all_reduce_copy_out`):
copy the local input into the own buffer, meet at a signal-pad barrier, load all ranks'
buffers and sum them in rank order (so every rank gets bit-identical sums), meet again (no
rank overwrites its buffer while a peer still reads it). No host work per call, so it runs
inside captured CUDA graphs; no multicast object or multimem instruction is used (the GPUs'
NVLink multicast stays off: TORCH_SYMM_MEM_DISABLE_MULTICAST=1).

`GroupComm` (runtime/distributed.py) sends messages up to `max_bytes` through it and larger
ones (prefill chunks), other dtypes and unaligned views through NCCL.

Off unless MINISGL_P2P_ALLREDUCE_MAX_BYTES is set (e.g. 1048576): on 2 x H100 (NVLink,
2026-11-26) it is 1.2-1.5x faster than NCCL per all-reduce in isolation (9.7 vs 12.6 us at
8 KB inside a graph, `tools/diag_allreduce.py`) but TP=2 batch-1 decode of the Llama-3-8B
shape ran at the same speed (230.5 vs 231.3 tok/s; docs/perf.md): its barrier on entry and
on exit makes each call wait for the slower rank twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.distributed as dist

#: all-reduces up to this many bytes take the one-shot path (0, the default: NCCL only)
MAX_BYTES_ENV = "MINISGL_P2P_ALLREDUCE_MAX_BYTES"
DEFAULT_MAX_BYTES = 0
#: dtypes torch's one-shot kernel sums
DTYPES = (torch.float32, torch.bfloat16)
ALIGN = 16  # bytes: the kernel loads 16-byte vectors


def max_bytes_setting() -> int:
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_BYTES_ENV} must be an integer number of bytes, got {raw!r}") from None
    return max(0, value)


class P2PAllReduce:
    """Sum of a small CUDA tensor over the group through one symmetric-memory buffer per rank."""

    def __init__(self, group: dist.ProcessGroup, device: torch.device, max_bytes: int) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.max_bytes = max_bytes
        self.device = device
        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
        if enable is not None:
            enable(self.group_name)
        self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
        self.handle = symm_mem.rendezvous(self.buffer, group)
        self._op: Callable[..., torch.Tensor] = torch.ops.symm_mem.one_shot_all_reduce_copy_out

    def fits(self, t: torch.Tensor) -> bool:
        n = t.numel() * t.element_size()
        return (
            t.device == self.device
            and t.dtype in DTYPES
            and 0 < n <= self.max_bytes
            and n % ALIGN == 0
            and t.data_ptr() % ALIGN == 0
            and t.is_contiguous()
        )

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The group's sum of `t` (a new tensor; `t` is left as it was). `fits(t)` must hold."""
        staged = self.buffer.view(t.dtype)[: t.numel()].view(t.shape)
        out = torch.empty_like(t)
        return self._op(staged, t, "sum", self.group_name, out)


def peers_reachable(device: torch.device, local_world: int) -> bool:
    """Every GPU of this host's ranks can load from this one's memory (and it from theirs)."""
    if device.type != "cuda" or device.index is None:
        return False
    if torch.cuda.device_count() < local_world:
        return False
    me = device.index
    return all(torch.cuda.can_device_access_peer(me, other) for other in range(local_world) if other != me)


def _agree(ok: bool, group: dist.ProcessGroup, device: torch.device) -> bool:
    """True on every rank when it is true on every rank (over the NCCL group)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    return bool(int(flag.item()))


def setup(group: dist.ProcessGroup, device: torch.device, local_world: int) -> tuple[P2PAllReduce | None, str]:
    """A working one-shot all-reduce for `group`, or None and why not (the same on every rank).

    Collective: every rank of the group calls it at the same point. Refuses where peer
    access is missing, torch lacks the op, the buffer cannot be made or a first sum comes
    out wrong (checked on every rank); then all ranks use NCCL alone.
    """
    max_bytes = max_bytes_setting()
    if max_bytes == 0:
        return None, f"the one-shot P2P path is off; {MAX_BYTES_ENV}=1048576 turns it on"
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")  # P2P loads only, never multicast
    world = dist.get_world_size(group)
    local_ok = (
        world == local_world
        and peers_reachable(device, local_world)
        and hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out")
    )
    if not _agree(local_ok, group, device):
        return None, "no peer-to-peer access between every pair of GPUs (or torch lacks the one-shot op)"
    try:
        p2p: P2PAllReduce | None = P2PAllReduce(group, device, max_bytes)
        why = ""
    except (RuntimeError, ValueError, AttributeError) as exc:
        p2p, why = None, f"symmetric memory unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if not _agree(p2p is not None, group, device) or p2p is None:
        return None, why or "symmetric memory unavailable on another rank"
    rank = dist.get_rank(group)
    probe = torch.full((1024,), float(rank + 1), dtype=torch.float32, device=device)
    got = p2p.all_reduce(probe)
    right = bool((got == world * (world + 1) / 2).all())
    if not _agree(right, group, device):
        return None, "the one-shot all-reduce gave a wrong sum on some rank"
    return p2p, ""
