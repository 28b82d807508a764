"""Run batches through a compiled model with a paged KV cache (page size 1).

This is the execution core under the scheduler. A step is a `StepBatch`: a few flat int64
host tensors (the new tokens, their positions and KV slots, and per request its row in
the request table, its new-token count and its context length after the step). The
runner keeps the persistent device state:

- the KV cache (`kv`) and the slot free list (`pool`);
- `req_to_token` [max_rows, max_len] int32 on the device: row r, column p is the KV slot
  of token p of the request that owns row r. Each step writes only its new slots into it
  (and the occasional explicit rewrite, `StepBatch.write_*`); the decode `kv_slots` and
  the extend `prefix_slots` are gathered from it on the device, so the host never re-sends
  a request's whole context.

Under tensor parallelism rank 0 builds each `StepBatch`, broadcasts it (`pack`/`unpack`,
plain int64 tensors) and every rank calls `run` on it.

`extend`/`decode`/`release` keep the scheduler-free interface of the parity checks: they
map caller request ids to rows and slots themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..catalogue.context import Comm, ForwardBatch, SingleRank
from ..errors import UserError
from .cuda_graph import DecodeGraphs, batch_sizes_for, resolve_tokens
from .model import CompiledModel

if TYPE_CHECKING:
    from .warmup import WarmStep


class SlotPool:
    """Free list of KV slots (page size 1)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = list(range(size - 1, -1, -1))

    @property
    def available(self) -> int:
        return len(self.free)

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise UserError(f"KV cache full: need {n} slots, {len(self.free)} free of {self.size}")
        if n == 0:
            return []
        out = self.free[-n:]
        del self.free[-n:]
        out.reverse()
        return out

    def give(self, slots: list[int]) -> None:
        self.free.extend(reversed(slots))


HEADER = 9  # is_decode, T, B, S, W, max_q, max_kv, total_kv, total_prefix


@dataclass(frozen=True)
class StepBatch:
    """One forward: host int64 tensors (what rank 0 broadcasts). Request b's new tokens are consecutive.

    The fields are views of one tensor (`flat`, also the broadcast payload), in this order;
    for a decode step its first 5 x B values are the CUDA-graph inputs as they are laid out
    on the device (token, position, KV slot, row, context length), copied in one go.
    """

    tokens: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    out_slots: torch.Tensor  # [T] KV slot written by each new token
    rows: torch.Tensor  # [B] request-table row of each request
    kv_lens: torch.Tensor  # [B] context length after the step (prefix + new)
    q_lens: torch.Tensor  # [B] new tokens of each request
    logits_at: torch.Tensor  # [S] token indices (into T) whose logits are returned
    write_rows: torch.Tensor  # [W] extra request-table writes, applied first (slot swaps)
    write_pos: torch.Tensor  # [W]
    write_slots: torch.Tensor  # [W]
    is_decode: bool  # every request has one new token and the decode path runs
    flat: torch.Tensor | None = None  # the fields above, concatenated in order
    # known on the host when built from lists (None: look at the tensors):
    has_placeholders: bool | None = None  # some token is a placeholder -(k + 1) of the step in flight
    all_previous: bool = False  # token i is exactly -(i + 1): the whole previous batch, in order
    sums: tuple[int, int, int, int] | None = None  # max q_len, max kv_len, sum kv_lens, sum prefix lens

    @staticmethod
    def build(
        tokens: list[int],
        positions: list[int],
        out_slots: list[int],
        rows: list[int],
        q_lens: list[int],
        kv_lens: list[int],
        logits_at: list[int],
        writes: tuple[list[int], list[int], list[int]] = ([], [], []),
        is_decode: bool = False,
    ) -> StepBatch:
        # one host tensor (one allocation, one list conversion); the fields are views of it
        flat = torch.tensor(
            [*tokens, *positions, *out_slots, *rows, *kv_lens, *q_lens, *logits_at, *writes[0], *writes[1], *writes[2]],
            dtype=torch.int64,
        )
        t, b, w = len(tokens), len(rows), len(writes[0])
        has_placeholders = bool(tokens) and min(tokens) < 0
        all_previous = has_placeholders and tokens == list(range(-1, -t - 1, -1))
        total_kv = sum(kv_lens)
        sums = (max(q_lens, default=0), max(kv_lens, default=0), total_kv, total_kv - sum(q_lens))
        return StepBatch(
            *flat.split_with_sizes([t, t, t, b, b, b, len(logits_at), w, w, w]),
            is_decode=is_decode,
            flat=flat,
            has_placeholders=has_placeholders,
            all_previous=all_previous,
            sums=sums,
        )

    def header(self) -> torch.Tensor:
        q, kv = self.q_lens, self.kv_lens
        b = q.shape[0]
        if self.sums is not None:
            max_q, max_kv, total_kv, total_prefix = self.sums
        else:
            max_q, max_kv = (int(q.max()), int(kv.max())) if b else (0, 0)
            total_kv, total_prefix = int(kv.sum()), int((kv - q).sum())
        values = [
            int(self.is_decode),
            self.tokens.shape[0],
            b,
            self.logits_at.shape[0],
            self.write_rows.shape[0],
            max_q,
            max_kv,
            total_kv,
            total_prefix,
        ]
        return torch.tensor(values, dtype=torch.int64)

    def payload(self) -> torch.Tensor:
        if self.flat is not None:
            return self.flat
        return torch.cat(
            [
                self.tokens,
                self.positions,
                self.out_slots,
                self.rows,
                self.kv_lens,
                self.q_lens,
                self.logits_at,
                self.write_rows,
                self.write_pos,
                self.write_slots,
            ]
        )

    @staticmethod
    def sizes(header: torch.Tensor) -> list[int]:
        _, t, b, s, w = (int(x) for x in header[:5].tolist())
        return [t, t, t, b, b, b, s, w, w, w]

    @staticmethod
    def unpack(header: torch.Tensor, payload: torch.Tensor) -> StepBatch:
        parts = payload.split(StepBatch.sizes(header))
        return StepBatch(*parts, is_decode=bool(int(header[0])), flat=payload)


class ModelRunner:
    def __init__(
        self,
        model: CompiledModel,
        num_slots: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        comm: Comm | None = None,
        max_rows: int = 64,
        max_len: int | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.kv = model.allocate_kv_cache(num_slots, dtype, self.device)
        self.pool = SlotPool(num_slots)
        self.comm = comm or SingleRank()
        self.max_rows = max_rows
        self.max_len = max_len if max_len is not None else num_slots
        self.req_to_token = torch.zeros(max_rows, self.max_len, dtype=torch.int32, device=self.device)
        # the scheduler-free interface (parity checks): request id -> (row, slots)
        self.contexts: dict[int, list[int]] = {}
        self._rows: dict[int, int] = {}
        self._free_rows = list(range(max_rows - 1, -1, -1))
        self.graphs: DecodeGraphs | None = None  # CUDA-graph decode (capture_cuda_graphs)

    def capture_cuda_graphs(
        self, batch_sizes: Sequence[int] | None = None, progress: Callable[[str], None] | None = None
    ) -> None:
        """Capture the decode forward for these batch sizes (default: up to max_rows); decode steps
        of at most the largest size then replay a graph (runtime/cuda_graph.py)."""
        sizes = list(batch_sizes) if batch_sizes is not None else batch_sizes_for(self.max_rows)
        graphs = DecodeGraphs(self.model, self.kv, self.req_to_token, self.comm, self.device, sizes)
        graphs.capture(progress)
        self.graphs = graphs

    def warm_up(self, chunk: int, vocab_size: int, progress: Callable[[str], None] | None = None) -> list[WarmStep]:
        """Run one dummy step for every kernel variant a real step can hit (prefill chunks up to
        `chunk` tokens, mixed and eager decode steps) so nothing compiles or autotunes while
        serving; leaves the pool, the request table and every request untouched
        (runtime/warmup.py). Call before serving."""
        from .warmup import warm_up

        return warm_up(self, chunk, vocab_size, progress)

    # ---- the engine's interface ----

    @torch.inference_mode()
    def run(self, step: StepBatch, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Write the step's slots into the request table, run the model; logits [S, vocab] (full vocab).

        `prev`: the previous step's sampled ids on the device (overlap scheduling); a token
        `-(k + 1)` in `step.tokens` stands for `prev[k]` and is replaced on the device.
        """
        if prev is not None and not (
            step.has_placeholders if step.has_placeholders is not None else bool((step.tokens < 0).any())
        ):
            prev = None
        if (
            self.graphs is not None
            and step.is_decode
            and not step.write_rows.numel()
            and self.graphs.fits(step.tokens.shape[0])
        ):  # CUDA-graph replay (runtime/cuda_graph.py)
            logits = self.graphs.run(step, self.req_to_token, prev)
            if step.logits_at.shape[0] == logits.shape[0]:
                return logits
            return logits[_to_device(step.logits_at, logits.device)]
        header = step.header()
        is_decode, t, b, s, w, max_q, _, total_kv, total_prefix = (int(x) for x in header.tolist())
        dev = self.device
        flat = _to_device(step.payload(), dev)
        tokens, positions, out_slots, rows, kv_lens, q_lens, logits_at, wr, wp, ws = flat.split(StepBatch.sizes(header))
        if prev is not None:
            tokens = resolve_tokens(tokens, prev)
        table = self.req_to_token
        if w:
            table[wr, wp] = ws.to(torch.int32)
        tok_rows = rows.repeat_interleave(q_lens, output_size=t)
        table[tok_rows, positions] = out_slots.to(torch.int32)
        cu = torch.zeros(b + 1, dtype=torch.int64, device=dev)
        torch.cumsum(q_lens, 0, out=cu[1:])
        logits_indices = None if s == t and is_decode else logits_at
        if is_decode:
            kv_indptr = torch.zeros(b + 1, dtype=torch.int64, device=dev)
            torch.cumsum(kv_lens, 0, out=kv_indptr[1:])
            batch = ForwardBatch(
                positions=positions,
                out_slots=out_slots,
                cu_seqlens_q=cu,
                is_decode=True,
                kv=self.kv,
                kv_indptr=kv_indptr,
                kv_slots=_gather_ranges(table, rows, kv_lens, kv_indptr, total_kv),
                logits_indices=logits_indices,
                max_seqlen_q=1,
                comm=self.comm,
                req_rows=rows,
                seq_lens=kv_lens,
                req_to_token=table,
            )
        else:
            prefix_lens = kv_lens - q_lens
            prefix_indptr = torch.zeros(b + 1, dtype=torch.int64, device=dev)
            torch.cumsum(prefix_lens, 0, out=prefix_indptr[1:])
            batch = ForwardBatch(
                positions=positions,
                out_slots=out_slots,
                cu_seqlens_q=cu,
                is_decode=False,
                kv=self.kv,
                prefix_indptr=prefix_indptr,
                prefix_slots=_gather_ranges(table, rows, prefix_lens, prefix_indptr, total_prefix),
                logits_indices=logits_indices,
                max_seqlen_q=max_q,
                comm=self.comm,
                req_rows=rows,
                seq_lens=kv_lens,
                req_to_token=table,
            )
        return self.model(tokens, batch)

    # ---- the scheduler-free interface (parity checks, greedy_generate) ----

    def release(self, req: int) -> None:
        self.pool.give(self.contexts.pop(req, []))
        row = self._rows.pop(req, None)
        if row is not None:
            self._free_rows.append(row)

    def _row(self, req: int) -> int:
        if req not in self._rows:
            if not self._free_rows:
                raise UserError(f"more than {self.max_rows} requests at once")
            self._rows[req] = self._free_rows.pop()
        return self._rows[req]

    def _step(self, requests: dict[int, list[int]], is_decode: bool, last_only: bool) -> torch.Tensor:
        tokens: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        rows: list[int] = []
        q_lens: list[int] = []
        kv_lens: list[int] = []
        last: list[int] = []
        for req, new in requests.items():
            ctx = self.contexts.setdefault(req, [])
            if len(ctx) + len(new) > self.max_len:
                raise UserError(f"request {req} would hold {len(ctx) + len(new)} tokens, more than {self.max_len}")
            rows.append(self._row(req))
            slots = self.pool.take(len(new))
            positions += range(len(ctx), len(ctx) + len(new))
            ctx += slots
            out_slots += slots
            tokens += new
            q_lens.append(len(new))
            kv_lens.append(len(ctx))
            last.append(len(tokens) - 1)
        logits_at = last if last_only else list(range(len(tokens)))
        return self.run(
            StepBatch.build(tokens, positions, out_slots, rows, q_lens, kv_lens, logits_at, is_decode=is_decode)
        )

    def extend(self, requests: dict[int, list[int]], *, all_logits: bool = False) -> list[torch.Tensor]:
        """Append tokens to each request (new or with a cached prefix); return logits per request.

        Logits are [n_new, vocab] per request with `all_logits`, else [vocab] for its last token.
        """
        logits = self._step(requests, False, not all_logits)
        if not all_logits:
            return list(logits.unbind(0))
        out, at = [], 0
        for new in requests.values():
            out.append(logits[at : at + len(new)])
            at += len(new)
        return out

    def decode(self, requests: dict[int, int]) -> list[torch.Tensor]:
        """One new token for each request; returns its logits [vocab] per request."""
        return list(self._step({r: [t] for r, t in requests.items()}, True, True).unbind(0))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device's queue (pinned staging on CUDA)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _gather_ranges(
    table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor, indptr: torch.Tensor, total: int
) -> torch.Tensor:
    """Concatenate ``table[rows[b], :lens[b]]`` over b, on the device (total = sum(lens), known on the host)."""
    b = rows.shape[0]
    seg = torch.repeat_interleave(torch.arange(b, device=rows.device), lens, output_size=total)
    col = torch.arange(total, device=rows.device) - indptr[:-1][seg]
    return table[rows[seg], col]
