"""Start-up warm-up: one forward for every kernel variant a real step can hit, before serving.

On CUDA a Triton kernel compiles the first time it meets a new variant, and the autotuned
ones also time their candidate configs there: extend attention per `seq_bucket` of the
step's longest query run, the fused-MoE GEMMs per (`block_m`, `pairs_bucket`) of its
(token, expert) pairs, the split-KV decode per split count, a linear layer's GEMV (or cuBLAS:
timed once) per rows bucket up to 16 rows, and every kernel per
`int_class` of each integer argument (the token count, the pairs) and 16-byte alignment of
each pointer. The rules live in `minisgl_kernels/buckets.py`, which the launchers use.
Without a warm-up those seconds land inside the first requests (their time to first token),
or inside a burst.

`plan_steps` lists the fewest dummy steps that meet every variant a step of the engine can
produce (its limits: the prefill chunk, the running requests, the pool, the context):

1. one prefill per extend-attention bucket, the bucket's longest prompt (the autotuner
   then times the configs on the largest runs the bucket holds);
2. an extend step for every token-count variant not met yet, longest first; past one chunk
   of prompt the extra tokens are decodes riding along (a mixed step);
3. a decode step (the eager path: CUDA graphs replay their own captured sizes, warmed at
   capture; the eager decode still runs when a step rewrites the request table) for every
   decode variant.

`warm_up` runs them through `ModelRunner.run` with real, free KV slots taken from the pool
and given back in the same order (the free list is unchanged), on request-table rows that
are restored afterwards; no request exists yet, the prefix cache is untouched, nothing is
sampled. The KV written into free slots is never read: a slot is written before it is read.
Every rank of a TP group computes the same plan and runs the same forwards.

CPU: off by default. The CPU runs the torch reference kernels: nothing compiles or tunes,
so a warm-up would only cost start-up time (`EngineConfig.warmup=True` forces it, as the
tests do).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from minisgl_kernels.buckets import (
    block_m_for,
    default_num_splits,
    gemv_bucket,
    int_class,
    pairs_bucket,
    seq_bucket,
)

from ..catalogue.attention import AttentionModule
from ..catalogue.moe import MoEModule
from .runner import StepBatch

if TYPE_CHECKING:
    from .runner import ModelRunner

#: context length of the decodes in warm-up steps (as the CUDA-graph capture uses)
DECODE_CONTEXT = 256


def say(line: str) -> None:
    """The engine's start-up progress line."""
    print(f"engine: {line}", file=sys.stderr, flush=True)


def enabled(setting: bool | None, device: torch.device) -> bool:
    """The warm-up runs as configured, else on CUDA only."""
    return setting if setting is not None else device.type == "cuda"


@dataclass(frozen=True)
class WarmStep:
    """One dummy step: `decodes` requests with one new token each, and one prompt of `prefill` tokens."""

    decodes: int
    prefill: int  # 0: a decode-only step

    @property
    def tokens(self) -> int:
        return self.decodes + self.prefill

    def describe(self) -> str:
        if not self.prefill:
            return f"decode batch {self.decodes}"
        ride = f" + {self.decodes} decodes" if self.decodes else ""
        return f"prefill {self.prefill} tokens{ride}"


@dataclass(frozen=True)
class ModelTraits:
    """What of the model decides its kernel variants."""

    moe: tuple[tuple[int, int], ...] = ()  # (top_k, experts) of the routed-experts layers
    kv_heads: tuple[int, ...] = ()  # local KV heads of the attention layers

    @staticmethod
    def of(model: torch.nn.Module) -> ModelTraits:
        moe, kv = set(), set()
        for m in model.modules():
            if isinstance(m, MoEModule):
                moe.add((m.top_k, int(m.gate_up.shape[0])))
            elif isinstance(m, AttentionModule):
                kv.add(m.kv_local)
        return ModelTraits(tuple(sorted(moe)), tuple(sorted(kv)))


def token_variant(tokens: int, traits: ModelTraits) -> Hashable:
    """The variants a step of `tokens` new tokens picks in every kernel sized by its tokens."""
    moe = tuple((block_m_for(tokens * k, e), pairs_bucket(tokens * k), int_class(tokens * k)) for k, e in traits.moe)
    # parity: an odd count keeps every multiple of it (heads x tokens rows) off the x16 class, and
    # the step's int64 vectors are views of one payload at offsets of 8 x tokens bytes: an odd
    # count leaves `positions` (read by the rope kernel) off Triton's 16-byte pointer alignment
    # gemv: every linear layer takes `tokens` rows (the LM head: the sampled rows, = tokens in a
    # decode step, so the decode steps meet each of its buckets)
    return int_class(tokens), tokens % 2, gemv_bucket(tokens), moe


def decode_variant(batch: int, traits: ModelTraits, device: torch.device) -> Hashable:
    """The variants of an eager decode step of `batch` requests."""
    return token_variant(batch, traits), tuple(default_num_splits(batch, h, device) for h in traits.kv_heads)


def plan_steps(
    max_prefill: int, max_tokens: int, max_decodes: int, traits: ModelTraits, device: torch.device
) -> list[WarmStep]:
    """The dummy steps meeting every variant: prompts run up to `max_prefill` tokens a step,
    steps hold up to `max_tokens` new tokens, decode steps up to `max_decodes` requests."""
    steps: list[WarmStep] = []
    tokens_met: set[Hashable] = set()
    if max_prefill >= 2:  # a 1-token chunk makes every step a decode step
        buckets: set[int] = set()
        for p in range(max_prefill, 1, -1):
            if seq_bucket(p) not in buckets:
                buckets.add(seq_bucket(p))
                steps.append(WarmStep(0, p))
                tokens_met.add(token_variant(p, traits))
        for t in range(max_tokens, 1, -1):
            v = token_variant(t, traits)
            if v not in tokens_met:
                tokens_met.add(v)
                p = min(t, max_prefill)
                steps.append(WarmStep(t - p, p))
    decodes_met: set[Hashable] = set()
    for b in range(max_decodes, 0, -1):
        v = decode_variant(b, traits, device)
        if v not in decodes_met:
            decodes_met.add(v)
            steps.append(WarmStep(b, 0))
    return steps


def warm_up(
    runner: ModelRunner, chunk: int, vocab_size: int, progress: Callable[[str], None] | None = None
) -> list[WarmStep]:
    """Run `plan_steps` for this runner and prefill chunk; returns the steps run."""
    pool, table = runner.pool, runner.req_to_token
    room = pool.available
    max_prefill = min(chunk, runner.max_len, room)
    max_tokens = min(max_prefill + runner.max_rows - 1, room)
    max_decodes = min(runner.max_rows, room)
    steps = plan_steps(max_prefill, max_tokens, max_decodes, ModelTraits.of(runner.model), runner.device)
    if not steps:
        return steps
    most = max(s.tokens for s in steps)
    context = max(1, min(DECODE_CONTEXT, runner.max_len, room - most + 1))
    rows = max(s.decodes + (1 if s.prefill else 0) for s in steps)
    slots = pool.take(most + context - 1)
    shared = slots[most:]  # the decodes' earlier tokens (one shared context, as a cached prefix)
    saved = table[:rows].clone()
    graphs, runner.graphs = runner.graphs, None  # decode steps run the eager path
    start = time.perf_counter()
    try:
        for i, s in enumerate(steps):
            t0 = time.perf_counter()
            if s.decodes and context > 1:
                table[: s.decodes, : context - 1] = torch.tensor(shared, dtype=table.dtype, device=table.device)
            runner.run(_step(s, slots, context, vocab_size))
            if runner.device.type == "cuda":
                torch.cuda.synchronize(runner.device)
            if progress is not None:
                progress(f"warm-up {s.describe()} ({i + 1}/{len(steps)}, {time.perf_counter() - t0:.1f} s)")
    finally:
        runner.graphs = graphs
        table[:rows] = saved
        pool.give(slots)
    if progress is not None:
        progress(f"warm-up done: {len(steps)} steps in {time.perf_counter() - start:.1f} s")
    return steps


def _step(s: WarmStep, slots: list[int], context: int, vocab: int) -> StepBatch:
    """The StepBatch of a warm-up step: decodes on rows 0.., the prompt on the next row."""
    n = s.tokens
    tokens = [(7919 * i + 17) % vocab for i in range(n)]  # varied ids: routers spread them over experts
    positions = [context - 1] * s.decodes + list(range(s.prefill))
    rows = list(range(s.decodes)) + ([s.decodes] if s.prefill else [])
    q_lens = [1] * s.decodes + ([s.prefill] if s.prefill else [])
    kv_lens = [context] * s.decodes + ([s.prefill] if s.prefill else [])
    logits_at = list(range(s.decodes)) + ([n - 1] if s.prefill else [])
    return StepBatch.build(tokens, positions, slots[:n], rows, q_lens, kv_lens, logits_at, is_decode=not s.prefill)
