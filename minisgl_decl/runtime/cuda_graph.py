"""CUDA-graph decode: the decode forward captured once per batch size, replayed per step.

A decode step's inputs are five int64 vectors of length B (token, position, KV slot to
write, request-table row, context length). The graph for size `bs` reads them from its own
persistent device buffer `[5, bs]`, filled by one host-to-device copy from a pinned host
buffer. A batch of `b` requests runs the smallest captured `bs >= b`: columns `b..bs-1` are
padding (token 0, position 0, slot -1: nothing stored; row 0, length 0: attention gives
zeros), and the logits of the first `b` rows are returned. The step's new slots are written
into the request table (outside the graph, real rows only) before the replay. Attention
reads each request's slots from the runner's request table (`kernels.decode_attention_paged`),
so no input changes shape.

Capture happens once at start-up, largest batch first, all graphs sharing one memory pool;
each size runs eagerly twice before its capture (Triton compiles and autotunes there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ..catalogue.context import Comm, ForwardBatch, KVCache
from .model import CompiledModel

if TYPE_CHECKING:
    from .runner import StepBatch

#: captured batch sizes (those above the engine's max running requests are dropped)
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
_PAD = (0, 0, -1, 0, 0)  # token, position, out slot, row, context length of a padding row
#: context length used while warming up / capturing (real lengths arrive at replay)
WARMUP_LEN = 256


def resolve_tokens(tokens: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Tokens with each placeholder `-(k + 1)` replaced by `prev[k]` (on the device, no host sync)."""
    index = (-1 - tokens).clamp_(0, prev.shape[0] - 1)
    return torch.where(tokens < 0, prev[index], tokens)


def batch_sizes_for(max_batch: int, sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> list[int]:
    """The captured sizes for at most `max_batch` requests (always including `max_batch`)."""
    chosen = sorted({s for s in sizes if s < max_batch} | {max_batch})
    return [s for s in chosen if s >= 1]


class DecodeGraphs:
    """Captured decode forwards over persistent inputs; `run` replays the smallest that fits."""

    def __init__(
        self,
        model: CompiledModel,
        kv: KVCache,
        req_to_token: torch.Tensor,
        comm: Comm,
        device: torch.device,
        batch_sizes: Sequence[int],
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.model, self.kv, self.table, self.comm, self.device = model, kv, req_to_token, comm, device
        self.sizes = sorted(set(batch_sizes))
        self.max_batch = self.sizes[-1]
        self.inputs = {bs: torch.zeros(5, bs, dtype=torch.int64, device=device) for bs in self.sizes}
        # two pinned host buffers used in turn, so filling step N+1's never waits for step N's copy
        self.host = [torch.zeros(5, self.max_batch, dtype=torch.int64, pin_memory=True) for _ in range(2)]
        self.copied = [torch.cuda.Event(), torch.cuda.Event()]  # the last copy out of each host buffer
        self.turn = 0
        self.pad = torch.tensor(_PAD, dtype=torch.int64)[:, None]
        self.cu = torch.arange(self.max_batch + 1, dtype=torch.int64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _batch(self, bs: int) -> tuple[torch.Tensor, ForwardBatch]:
        tokens, positions, out_slots, rows, lens = self.inputs[bs].unbind(0)
        batch = ForwardBatch(
            positions=positions,
            out_slots=out_slots,
            cu_seqlens_q=self.cu[: bs + 1],
            is_decode=True,
            kv=self.kv,
            max_seqlen_q=1,
            comm=self.comm,
            req_rows=rows,
            seq_lens=lens,
            req_to_token=self.table,
        )
        return tokens, batch

    @torch.inference_mode()
    def capture(self, progress: Callable[[str], None] | None = None) -> None:
        """Capture every size (largest first); `progress` gets one line per size."""
        pool = torch.cuda.graph_pool_handle()
        warm_len = min(WARMUP_LEN, self.table.shape[1])
        stream = torch.cuda.Stream(self.device)
        for i, bs in enumerate(sorted(self.sizes, reverse=True)):
            self.inputs[bs].copy_(self.pad.expand(-1, bs))
            self.inputs[bs][4] = warm_len  # realistic lengths for autotuning; nothing is stored (slot -1)
            tokens, batch = self._batch(bs)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.model(tokens, batch)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(tokens, batch)
            self.graphs[bs] = (graph, out)
            if progress is not None:
                progress(f"captured CUDA graph for decode batch {bs} ({i + 1}/{len(self.sizes)})")
        for bs in self.sizes:
            self.inputs[bs].copy_(self.pad.expand(-1, bs))
        torch.cuda.synchronize(self.device)

    def fits(self, batch: int) -> bool:
        return 1 <= batch <= self.max_batch and bool(self.graphs)

    def run(self, step: StepBatch, req_to_token: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [b, vocab] of a decode step of b requests (host tensors of `step`).

        `prev`: the previous step's sampled ids on the device; token `-(k + 1)` means `prev[k]`.
        """
        b = step.tokens.shape[0]
        bs = next(s for s in self.sizes if s >= b)
        self.turn ^= 1
        copied = self.copied[self.turn]
        copied.synchronize()  # the copy two steps ago has read this host buffer
        host = self.host[self.turn][:, :bs]
        if step.flat is not None:  # tokens, positions, slots, rows, lengths: the first 5 x b values, in this order
            host[:, :b] = step.flat[: 5 * b].view(5, b)
        else:
            for i, part in enumerate((step.tokens, step.positions, step.out_slots, step.rows, step.kv_lens)):
                host[i, :b] = part
        if bs > b:
            host[:, b:] = self.pad
        inputs = self.inputs[bs]
        inputs.copy_(host, non_blocking=True)
        copied.record()
        if prev is not None:
            if step.all_previous and prev.shape[0] >= b:  # token i is prev[i] (the steady state): one copy
                inputs[0, :b].copy_(prev[:b])
            else:
                inputs[0, :b] = resolve_tokens(inputs[0, :b], prev)
        req_to_token[inputs[3, :b], inputs[1, :b]] = inputs[2, :b].to(req_to_token.dtype)
        graph, out = self.graphs[bs]
        graph.replay()
        return out[:b]
