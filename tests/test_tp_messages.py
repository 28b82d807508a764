"""Rank 0's step messages (engine/tp.py) reach a worker intact: small steps inline in one
fixed-size message, large ones as that message plus the payload; STOP ends the loop.

The broadcasts are replaced by a queue (what rank 0 sends, in order, is what the worker's
receives fill in), so the packing and unpacking are tested without a process group.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from minisgl_decl.engine import tp
from minisgl_decl.runtime.runner import StepBatch


def _step(n_requests: int, tokens_each: int, decode: bool) -> StepBatch:
    tokens, positions, slots, rows, q_lens, kv_lens, at = [], [], [], [], [], [], []
    for r in range(n_requests):
        start = 7 * r
        tokens += [100 + r * 1000 + k for k in range(tokens_each)]
        positions += range(start, start + tokens_each)
        slots += [5000 + r * 1000 + k for k in range(tokens_each)]
        rows.append(r)
        q_lens.append(tokens_each)
        kv_lens.append(start + tokens_each)
        at.append(len(tokens) - 1)
    return StepBatch.build(tokens, positions, slots, rows, q_lens, kv_lens, at, ([3], [4], [9]), decode)


class _Wire:
    """dist.broadcast stand-in: rank 0's sends are queued, the worker's receives pop them."""

    def __init__(self) -> None:
        self.queue: list[torch.Tensor] = []
        self.sending = True

    def broadcast(self, t: torch.Tensor, src: int = 0, group: Any = None) -> None:
        if self.sending:
            self.queue.append(t.clone())
        else:
            sent = self.queue.pop(0)
            assert sent.shape == t.shape, "the worker expected a message of another size"
            t.copy_(sent)


@pytest.mark.parametrize(("n_requests", "tokens_each", "decode", "messages"), [(3, 1, True, 1), (2, 300, False, 2)])
def test_steps_arrive_intact(
    monkeypatch: pytest.MonkeyPatch, n_requests: int, tokens_each: int, decode: bool, messages: int
) -> None:
    wire = _Wire()
    monkeypatch.setattr(tp.dist, "broadcast", wire.broadcast)
    comm: Any = SimpleNamespace(control=object(), group=None, device=torch.device("cpu"))
    steps = [_step(n_requests, tokens_each, decode), _step(1, 1, True)]
    tp.send_step(comm, steps[0])
    assert len(wire.queue) == messages
    tp.send_step(comm, steps[1])
    tp.send_stop(comm)
    wire.sending = False
    seen: list[StepBatch] = []
    runner: Any = SimpleNamespace(run=lambda step, prev: seen.append(step))
    tp.worker_loop(runner, comm)
    assert not wire.queue
    assert len(seen) == 2
    for got, want in zip(seen, steps, strict=True):
        assert got.is_decode == want.is_decode
        assert torch.equal(got.payload(), want.payload())
        assert torch.equal(got.header(), want.header())
