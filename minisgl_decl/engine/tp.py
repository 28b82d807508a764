"""Tensor parallelism for the engine: rank 0 schedules, every rank runs the same forward.

Rank 0 broadcasts each step as int64 tensors (no pickle): a fixed-size message
`[command, *StepBatch.header(), payload or zeros]` that carries the step's payload inline when
it has at most `INLINE` numbers (decode steps up to ~70 requests: one broadcast a step), else
a second broadcast with the payload follows. Workers
(`worker_loop`) receive, run the model on their shard (the collectives inside the
layers pair up with rank 0's) and discard the logits. `STOP` ends the loop; `PING` keeps
an idle group's collectives inside their timeout.

The step messages travel on the host (`comm.control`, a gloo group beside NCCL on GPUs): a
worker's host gets step N+1 while its GPU still runs step N and queues it at once, instead
of learning it from a device broadcast that waits behind step N's kernels.

Under overlap scheduling a step's tokens may name the previous step's sampled ids, which
only rank 0 samples: `RUN_SAMPLED` says that rank 0 broadcasts this step's sampled ids
(device to device, no host sync) after the forward, and workers keep them for the next step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime.distributed import GroupComm
from ..runtime.runner import HEADER, ModelRunner, StepBatch

RUN, STOP, PING, RUN_SAMPLED = 0, 1, 2, 3
#: payload numbers carried inside the fixed-size step message (larger payloads follow it)
INLINE = 512
MESSAGE = 1 + HEADER + INLINE


def _message(command: int, step: StepBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed-size message, and the payload to send after it when it does not fit inline."""
    head = torch.zeros(MESSAGE, dtype=torch.int64)
    head[0] = command
    if step is None:
        return head, None
    head[1 : 1 + HEADER] = step.header()
    payload = step.payload()
    if payload.numel() <= INLINE:
        head[1 + HEADER : 1 + HEADER + payload.numel()] = payload
        return head, None
    return head, payload


def _control(comm: GroupComm) -> tuple[dist.ProcessGroup | None, torch.device]:
    """The group and device of the step messages: host tensors on the gloo control group if any."""
    if comm.control is not None:
        return comm.control, torch.device("cpu")
    return comm.group, comm.device


def _send(comm: GroupComm, t: torch.Tensor) -> None:
    group, device = _control(comm)
    dist.broadcast(t.to(device), src=0, group=group)


def send_step(comm: GroupComm, step: StepBatch, with_sampled: bool = False) -> None:
    """Before rank 0 runs `step`; `with_sampled`: `send_sampled` follows the forward."""
    head, payload = _message(RUN_SAMPLED if with_sampled else RUN, step)
    _send(comm, head)
    if payload is not None:
        _send(comm, payload)


def send_sampled(comm: GroupComm, ids: torch.Tensor) -> None:
    """Rank 0's sampled ids of the step just run (int64, on the device) to every worker."""
    dist.broadcast(ids.contiguous(), src=0, group=comm.group)


def send_stop(comm: GroupComm) -> None:
    _send(comm, _message(STOP, None)[0])


def send_ping(comm: GroupComm) -> None:
    _send(comm, _message(PING, None)[0])


def worker_loop(runner: ModelRunner, comm: GroupComm) -> None:
    """Ranks > 0: run every step rank 0 sends until it says stop."""
    group, device = _control(comm)
    head = torch.zeros(MESSAGE, dtype=torch.int64, device=device)
    prev: torch.Tensor | None = None  # the last step's sampled ids (overlap scheduling)
    while True:
        dist.broadcast(head, src=0, group=group)
        host = head.cpu()
        command = int(host[0])
        if command == STOP:
            return
        if command == PING:
            continue
        header = host[1 : 1 + HEADER]
        n = sum(StepBatch.sizes(header))
        if n <= INLINE:
            payload = host[1 + HEADER : 1 + HEADER + n].clone()  # `head` is reused by the next message
        else:
            payload = torch.empty(n, dtype=torch.int64, device=device)
            dist.broadcast(payload, src=0, group=group)
        step = StepBatch.unpack(header, payload.cpu())
        runner.run(step, prev)
        if command == RUN_SAMPLED:
            prev = torch.empty(step.logits_at.shape[0], dtype=torch.int64, device=comm.device)
            dist.broadcast(prev, src=0, group=comm.group)
