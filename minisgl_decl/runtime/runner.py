"""Run requests through a compiled model with a paged KV cache (page size 1).

This is the execution core under the scheduler: it turns "extend these requests by
these tokens" and "decode one token for each of these requests" into a `ForwardBatch`
and calls the model. Slots are handed out from a free list; a request's context is the
list of its slots in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..catalogue.context import Comm, ForwardBatch, SingleRank
from ..errors import UserError
from .model import CompiledModel


@dataclass
class SlotPool:
    size: int
    free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(self.size - 1, -1, -1))

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise UserError(f"KV cache full: need {n} slots, {len(self.free)} free of {self.size}")
        return [self.free.pop() for _ in range(n)]

    def give(self, slots: list[int]) -> None:
        self.free.extend(reversed(slots))


class ModelRunner:
    def __init__(self, model: CompiledModel, num_slots: int, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", comm: Comm | None = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.kv = model.allocate_kv_cache(num_slots, dtype, self.device)
        self.pool = SlotPool(num_slots)
        self.contexts: dict[int, list[int]] = {}
        self.comm = comm or SingleRank()

    def _t(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)

    def release(self, req: int) -> None:
        self.pool.give(self.contexts.pop(req, []))

    @torch.inference_mode()
    def extend(self, requests: dict[int, list[int]], *, all_logits: bool = False) -> list[torch.Tensor]:
        """Append tokens to each request (new or with a cached prefix); return logits per request.

        Logits are [n_new, vocab] per request with `all_logits`, else [vocab] for its last token.
        """
        tokens, positions, out_slots, cu, prefix_ptr, prefix_slots, last = [], [], [], [0], [0], [], []
        for req, new in requests.items():
            ctx = self.contexts.setdefault(req, [])
            prefix_slots += ctx
            prefix_ptr.append(len(prefix_slots))
            slots = self.pool.take(len(new))
            positions += range(len(ctx), len(ctx) + len(new))
            ctx += slots
            out_slots += slots
            tokens += new
            cu.append(len(tokens))
            last.append(len(tokens) - 1)
        batch = ForwardBatch(
            positions=self._t(positions), out_slots=self._t(out_slots), cu_seqlens_q=self._t(cu),
            is_decode=False, kv=self.kv, prefix_indptr=self._t(prefix_ptr), prefix_slots=self._t(prefix_slots),
            logits_indices=None if all_logits else self._t(last), comm=self.comm,
            max_seqlen_q=max(len(new) for new in requests.values()),
        )
        logits = self.model(self._t(tokens), batch)
        if all_logits:
            return [logits[cu[b] : cu[b + 1]] for b in range(len(requests))]
        return list(logits.unbind(0))

    @torch.inference_mode()
    def decode(self, requests: dict[int, int]) -> list[torch.Tensor]:
        """One new token for each request; returns its logits [vocab] per request."""
        tokens, positions, out_slots, kv_ptr, kv_slots = [], [], [], [0], []
        for req, tok in requests.items():
            ctx = self.contexts[req]
            (slot,) = self.pool.take(1)
            positions.append(len(ctx))
            ctx.append(slot)
            out_slots.append(slot)
            tokens.append(tok)
            kv_slots += ctx
            kv_ptr.append(len(kv_slots))
        n = len(tokens)
        batch = ForwardBatch(
            positions=self._t(positions), out_slots=self._t(out_slots), cu_seqlens_q=self._t(list(range(n + 1))),
            is_decode=True, kv=self.kv, kv_indptr=self._t(kv_ptr), kv_slots=self._t(kv_slots), comm=self.comm,
        )
        return list(self.model(self._t(tokens), batch).unbind(0))
