"""Tensor parallelism for the engine: rank 0 schedules, every rank runs the same forward.

Rank 0 broadcasts each step as two int64 tensors (no pickle): a fixed-size header
`[command, *StepBatch.header()]`, then, for a run, the step's payload. Workers
(`worker_loop`) receive, run the model on their shard (the collectives inside the
layers pair up with rank 0's) and discard the logits. `STOP` ends the loop; `PING` keeps
an idle group's collectives inside their timeout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime.distributed import GroupComm
from ..runtime.runner import HEADER, ModelRunner, StepBatch

RUN, STOP, PING = 0, 1, 2


def _header(command: int, step: StepBatch | None) -> torch.Tensor:
    head = torch.zeros(1 + HEADER, dtype=torch.int64)
    head[0] = command
    if step is not None:
        head[1:] = step.header()
    return head


def send_step(comm: GroupComm, step: StepBatch) -> None:
    dist.broadcast(_header(RUN, step).to(comm.device), src=0, group=comm.group)
    dist.broadcast(step.payload().to(comm.device), src=0, group=comm.group)


def send_stop(comm: GroupComm) -> None:
    dist.broadcast(_header(STOP, None).to(comm.device), src=0, group=comm.group)


def send_ping(comm: GroupComm) -> None:
    dist.broadcast(_header(PING, None).to(comm.device), src=0, group=comm.group)


def worker_loop(runner: ModelRunner, comm: GroupComm) -> None:
    """Ranks > 0: run every step rank 0 sends until it says stop."""
    head = torch.zeros(1 + HEADER, dtype=torch.int64, device=comm.device)
    while True:
        dist.broadcast(head, src=0, group=comm.group)
        host = head.cpu()
        command = int(host[0])
        if command == STOP:
            return
        if command == PING:
            continue
        payload = torch.empty(sum(StepBatch.sizes(host[1:])), dtype=torch.int64, device=comm.device)
        dist.broadcast(payload, src=0, group=comm.group)
        runner.run(StepBatch.unpack(host[1:], payload.cpu()))
