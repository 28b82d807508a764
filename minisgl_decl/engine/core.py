"""The engine loop body: `step()` = schedule -> run -> postprocess. Single-threaded, no asyncio.

`EngineCore` owns the model runner, the scheduler, the prefix cache and the sampler.
Under tensor parallelism (rank 0) every step is broadcast to the other ranks before it
runs (`tp.send_step`); they run the same forward in `tp.worker_loop`.

Overlap scheduling (default on CUDA, `EngineConfig.overlap`): `step()` plans and launches
step N+1 before it waits for step N's tokens, so the host work of a step (scheduling,
building the batch, the launches) runs while the GPU computes the previous one. The tokens
sampled by step N stay on the device and feed step N+1 (placeholders `-(k + 1)` in the
request's output, replaced on the device by the runner); the host learns them one step
later, when it reports them (stop strings, EOS, detokenisation). A request that ends on EOS
or a stop string has then run one more decode, whose token is dropped; one that reaches
max_tokens is not decoded again (the scheduler knows that on the host).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..runtime import warmup
from ..runtime.distributed import GroupComm
from ..runtime.runner import ModelRunner, StepBatch
from . import tp
from .api import EngineConfig, EngineStats, InvalidRequest, RequestOutput, SamplingParams, TokenLogprob
from .detokenize import OutputText, stop_token_ids
from .loader import LoadedModel, announce, kv_pool_tokens
from .radix import RadixCache
from .request import Request
from .sampling import SampledBatch, Sampler
from .scheduler import Plan, Scheduler

#: default prefill tokens per step. CPU: `tools/bench_engine.py --sweep-chunk` (docs/engine.md) gives 256
#: >= 90% of the prefill rate of 512 at half its longest step (what a running decode waits for).
#: CUDA: not measured yet (the sweep has not run on a GPU); 2048 is a placeholder until it does.
DEFAULT_CHUNK = {"cpu": 256, "cuda": 2048}


def max_model_len(config: EngineConfig, loaded: LoadedModel) -> int:
    """`config.max_model_len` when given (it overrides the checkpoint's), else the checkpoint's."""
    limit = config.max_model_len if config.max_model_len is not None else loaded.max_model_len
    if limit < 2:
        raise InvalidRequest(f"--max-model-len must be at least 2, got {limit}", "max_model_len")
    return limit


def build_runner(config: EngineConfig, loaded: LoadedModel, comm: GroupComm | None) -> tuple[ModelRunner, int]:
    """The KV pool and request table, identical on every rank; returns (runner, chunk size)."""
    tokens = kv_pool_tokens(config, loaded, comm)
    chunk = config.chunked_prefill_size or DEFAULT_CHUNK.get(loaded.device.type, 2048)
    if chunk < 1:
        raise InvalidRequest(f"--chunked-prefill-size must be at least 1, got {chunk}", "chunked_prefill_size")
    if config.max_running < 1:
        raise InvalidRequest(f"--max-running must be at least 1, got {config.max_running}", "max_running")
    runner = ModelRunner(
        loaded.model,
        tokens,
        dtype=loaded.dtype,
        device=loaded.device,
        comm=comm,
        max_rows=config.max_running,
        max_len=min(max_model_len(config, loaded), tokens),
    )
    if comm is None or comm.rank == 0:
        announce(loaded, tokens, chunk, max_model_len(config, loaded))
    graphs = config.cuda_graph and loaded.device.type == "cuda"  # every rank captures the same sizes (TP: NCCL inside)
    if graphs and loaded.model.not_graph_capturable:
        graphs = False
        print(
            f"engine: CUDA graphs off: no capturable decode for {', '.join(loaded.model.not_graph_capturable)}",
            file=sys.stderr,
            flush=True,
        )
    if graphs:
        runner.capture_cuda_graphs(progress=lambda line: print(f"engine: {line}", file=sys.stderr, flush=True))
    if warmup.enabled(config.warmup, loaded.device):  # kernels compile / autotune now, not in the first requests
        runner.warm_up(chunk, loaded.vocab_size, warmup.say if comm is None or comm.rank == 0 else None)
    return runner, chunk


def use_overlap(config: EngineConfig, device: torch.device) -> bool:
    """Overlap scheduling: as configured, else on for CUDA and off for the CPU."""
    return config.overlap if config.overlap is not None else device.type == "cuda"


@dataclass
class _InFlight:
    """A launched step whose sampled tokens the host has not read yet."""

    sampled: SampledBatch
    requests: list[Request]
    at: list[int]  # index in each request's output of the placeholder for its token


class EngineCore:
    def __init__(self, config: EngineConfig, loaded: LoadedModel, comm: GroupComm | None = None) -> None:
        self.config, self.loaded = config, loaded
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.runner, chunk = build_runner(config, loaded, comm)
        self.cache = RadixCache() if config.prefix_cache else None
        self.sched = Scheduler(
            self.runner.pool, self.cache, config.max_running, chunk, config.schedule_policy, config.max_wait_steps
        )
        self.sampler = Sampler(loaded.vocab_size, loaded.device, seed=config.seed)
        self.tokenizer = loaded.tokenizer
        self.max_model_len = max_model_len(config, loaded)
        self.requests: dict[str, Request] = {}
        self._keys = itertools.count()
        self.prompt_tokens = self.generated_tokens = 0
        self.overlap = use_overlap(config, loaded.device)
        self._inflight: _InFlight | None = None

    # ---- requests ----

    def check(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise InvalidRequest for a request this engine can never serve."""
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", "prompt")
        vocab = self.loaded.vocab_size
        bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab})", "prompt")
        bias = [t for t in params.logit_bias if not isinstance(t, int) or not 0 <= t < vocab]
        if bias:
            raise InvalidRequest(
                f"logit_bias token id {bias[0]!r} is outside the vocabulary [0, {vocab})", "logit_bias"
            )
        n, limit, pool = len(prompt_ids), self.max_model_len, self.runner.pool.size
        if n >= limit:
            raise InvalidRequest(
                f"the prompt has {n} tokens; this model's context length is {limit} (prompt + max_tokens must fit)",
                "prompt",
            )
        if n + params.max_tokens > limit:
            raise InvalidRequest(
                f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) = "
                f"{n + params.max_tokens} exceeds the context length {limit}; "
                f"lower max_tokens to at most {limit - n}",
                "max_tokens",
            )
        if n + params.max_tokens > pool:
            raise InvalidRequest(
                f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) exceeds the KV cache "
                f"({pool} tokens); lower max_tokens to at most {max(pool - n, 0)}",
                "max_tokens",
            )

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        if request_id in self.requests:
            raise InvalidRequest(f"request id {request_id!r} is already running", "request_id")
        self.check(prompt_ids, params)
        prompt = list(prompt_ids)
        req = Request(
            next(self._keys),
            request_id,
            prompt,
            params,
            OutputText(self.tokenizer, params, prompt, self.loaded.eos_ids),
        )
        self.sampler.add(req.key, params, prompt, stop_ids=stop_token_ids(params, self.loaded.eos_ids))
        self.requests[request_id] = req
        self.sched.waiting.append(req)
        self.prompt_tokens += len(prompt)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its KV; its final output (finish_reason "abort"), if it was known."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        req.finish_reason = "abort"
        del req.output[req.resolved :]  # tokens of the step in flight are dropped
        return self._finish(req, "")

    def has_work(self) -> bool:
        return bool(self.sched.waiting or self.sched.running or self._inflight is not None)

    # ---- the step ----

    def step(self) -> list[RequestOutput]:
        if self.overlap:
            return self._step_overlap()
        plan = self.sched.schedule()
        if not plan.items:
            return []
        step, sample_items = self._batch(plan)
        if self.comm is not None:
            tp.send_step(self.comm, step)
        logits = self.runner.run(step)
        for it in plan.items:  # prompts just prefilled become cacheable for the requests behind them
            if len(it.slots) > 1 and it.req.pending == 0:
                self.sched.cache_prefix(it.req)
        if not sample_items:
            return []
        sampled = self.sampler.sample(logits, [r.key for r in sample_items])
        return [self._postprocess(r, s.token_id, s.logprob) for r, s in zip(sample_items, sampled, strict=True)]

    def _step_overlap(self) -> list[RequestOutput]:
        """Launch step N+1 (its inputs may name step N's tokens, still on the device), then report step N."""
        plan = self.sched.schedule()
        launched = self._launch(plan) if plan.items else None
        done, self._inflight = self._inflight, launched
        return self._resolve(done) if done is not None else []

    def _launch(self, plan: Plan) -> _InFlight | None:
        step, sample_items = self._batch(plan)
        prev = self._inflight.sampled.ids if self._inflight is not None else None
        if self.comm is not None:
            tp.send_step(self.comm, step, with_sampled=bool(sample_items))
        logits = self.runner.run(step, prev)
        for it in plan.items:  # prompts just prefilled become cacheable (all their tokens known on the host)
            r = it.req
            if len(it.slots) > 1 and r.pending == 0 and r.resolved == len(r.output):
                self.sched.cache_prefix(r)
        if not sample_items:
            return None
        sampled = self.sampler.launch(logits, [r.key for r in sample_items])
        if self.comm is not None:
            tp.send_sampled(self.comm, sampled.ids)
        at = []
        for k, r in enumerate(sample_items):
            at.append(len(r.output))
            r.output.append(-(k + 1))  # placeholder: the k-th token sampled by this step
        return _InFlight(sampled, sample_items, at)

    def _resolve(self, done: _InFlight) -> list[RequestOutput]:
        """Read a launched step's tokens on the host and report them (finishing requests as they end)."""
        outs = []
        for r, at, s in zip(done.requests, done.at, done.sampled.result(), strict=True):
            if r.finish_reason is not None:  # aborted, or finished by an earlier token
                continue
            r.output[at] = s.token_id
            r.resolved = at + 1
            outs.append(self._postprocess(r, s.token_id, s.logprob))
        return outs

    def _batch(self, plan: Plan) -> tuple[StepBatch, list[Request]]:
        tokens: list[int] = []
        positions: list[int] = []
        out_slots: list[int] = []
        rows, q_lens, kv_lens, logits_at = [], [], [], []
        sample: list[Request] = []
        for it in plan.items:
            r, start, n = it.req, it.start, len(it.slots)
            end = start + n
            prompt = r.prompt
            if n == 1:  # a decode: its one pending token
                tokens.append(prompt[start] if start < len(prompt) else r.output[start - len(prompt)])
                positions.append(start)
                out_slots.append(it.slots[0])
            else:
                tokens += r.tokens(start, end)
                positions += range(start, end)
                out_slots += it.slots
            rows.append(r.row)
            q_lens.append(n)
            kv_lens.append(end)
            if end == len(prompt) + len(r.output):
                logits_at.append(len(tokens) - 1)
                sample.append(r)
        step = StepBatch.build(
            tokens, positions, out_slots, rows, q_lens, kv_lens, logits_at, plan.writes, plan.is_decode
        )
        return step, sample

    def _postprocess(self, req: Request, token: int, logprob: TokenLogprob | None) -> RequestOutput:
        if not self.overlap:
            req.output.append(token)
            req.resolved = len(req.output)
        self.generated_tokens += 1
        text, reason = req.text.append(token)
        if reason is None and req.resolved >= req.params.max_tokens:
            reason = "length"
            text += req.text.finish()
        logprobs = (logprob,) if req.params.logprobs and logprob is not None else None
        if reason is not None:
            req.finish_reason = reason
            del req.output[req.resolved :]  # a decode already launched past the end: its token is dropped
            return self._finish(req, text, logprobs)
        return self._output(req, text, logprobs, False)

    def _output(
        self, req: Request, text: str, logprobs: tuple[TokenLogprob, ...] | None, finished: bool
    ) -> RequestOutput:
        new = tuple(req.output[req.sent_tokens : req.resolved])
        req.sent_tokens = req.resolved
        return RequestOutput(
            req.request_id,
            text,
            new,
            logprobs,
            finished,
            req.finish_reason if finished else None,
            len(req.prompt),
            req.resolved,
            req.cached_tokens,
        )

    def _finish(self, req: Request, text: str, logprobs: tuple[TokenLogprob, ...] | None = None) -> RequestOutput:
        self.sched.remove(req)
        self.sampler.remove(req.key)
        del self.requests[req.request_id]
        return self._output(req, text, logprobs, True)

    # ---- introspection ----

    def stats(self) -> EngineStats:
        pool = self.runner.pool
        cache_size = self.cache.size if self.cache is not None else 0
        evictable = self.cache.evictable if self.cache is not None else 0
        return EngineStats(
            running=len(self.sched.running),
            waiting=len(self.sched.waiting),
            kv_total=pool.size,
            kv_used=pool.size - pool.available,
            kv_evictable=evictable if cache_size else 0,
            prompt_tokens=self.prompt_tokens,
            cached_prompt_tokens=self.sched.cached_tokens,
            generated_tokens=self.generated_tokens,
            preemptions=self.sched.preemptions,
        )

    def flush_cache(self) -> int:
        """Evict every unreferenced prefix-cache entry back to the pool; returns the slots freed."""
        if self.cache is None:
            return 0
        freed = self.cache.clear()
        self.runner.pool.give(freed)
        return len(freed)

    def close(self) -> None:
        """Tell the other ranks to stop (rank 0 under TP)."""
        if self.comm is not None:
            tp.send_stop(self.comm)
            self.comm = None

    def ping(self) -> None:
        """Keep idle worker ranks' collectives from timing out."""
        if self.comm is not None:
            tp.send_ping(self.comm)
