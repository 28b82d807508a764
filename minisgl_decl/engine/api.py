"""The engine's public contract: what a request asks for and what comes back.

The server (`minisgl_decl/server/`), the offline `generate` command and the tests talk to
the engine only through these types. They are plain frozen dataclasses (no pydantic, no
torch): the HTTP layer validates and converts its pydantic bodies into them.

Flow: `EngineClient.generate(request_id, prompt_ids, params)` yields `RequestOutput`
deltas until one has `finished=True`. Cancelling the iterator (client disconnect) aborts
the request and frees its KV slots.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..errors import UserError

FinishReason = Literal["stop", "length", "abort"]
#: the order waiting requests are admitted in (`engine/scheduler.py`)
SchedulePolicy = Literal["fcfs", "shortest-first"]
SCHEDULE_POLICIES: tuple[SchedulePolicy, ...] = ("fcfs", "shortest-first")
DEFAULT_MAX_WAIT_STEPS = 16  # shortest-first: admitting steps a request may be passed over


class InvalidRequest(UserError):
    """A request the engine can never serve (shown to the client as a 400; `param` names the field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (OpenAI/vLLM meanings).

    temperature 0 is greedy; top_k 0 means off; logit_bias maps token id -> bias added to
    the logit; logprobs returns the chosen token's log-probability and top_logprobs the
    k most likely alternatives (0..20). stop strings are matched on the detokenised text
    and excluded from it; stop_token_ids and the model's EOS ids end a request with
    finish_reason "stop" (EOS ignored with ignore_eos). min_tokens (vLLM's): EOS and
    stop_token_ids cannot be sampled before that many tokens were generated (stop strings
    still apply).
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.max_tokens >= 1, "max_tokens", f"max_tokens must be at least 1, got {self.max_tokens}"),
            (
                0 <= self.min_tokens <= self.max_tokens,
                "min_tokens",
                f"min_tokens must be in [0, max_tokens ({self.max_tokens})], got {self.min_tokens}",
            ),
            (self.temperature >= 0, "temperature", f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= 0 or self.top_k == -1, "top_k", f"top_k must be >= 0 (or -1: off), got {self.top_k}"),
            (0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}"),
            (
                self.repetition_penalty > 0,
                "repetition_penalty",
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            ),
            (
                -2 <= self.frequency_penalty <= 2,
                "frequency_penalty",
                f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}",
            ),
            (
                -2 <= self.presence_penalty <= 2,
                "presence_penalty",
                f"presence_penalty must be in [-2, 2], got {self.presence_penalty}",
            ),
            (0 <= self.top_logprobs <= 20, "top_logprobs", f"top_logprobs must be in [0, 20], got {self.top_logprobs}"),
        ]
        for ok, param, message in checks:
            if not ok:
                raise InvalidRequest(message, param)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True)
class RequestOutput:
    """One delta of a request's output: the tokens and text produced since the last delta.

    `text` never ends inside a multi-byte character or a possible stop-string match; the
    concatenation of every delta's `text` is the final output text. The last delta has
    `finished=True` and a `finish_reason`.
    """

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int  # total so far
    cached_tokens: int  # prompt tokens served from the prefix cache


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_total: int  # slots (tokens) in the KV pool
    kv_used: int  # slots held by requests or by the prefix cache
    kv_evictable: int  # slots held only by the prefix cache (free-able)
    prompt_tokens: int  # totals since start
    cached_prompt_tokens: int
    generated_tokens: int
    preemptions: int


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to start an engine (the `serve`/`generate` flags)."""

    model: Path
    spec: Path | None = None  # None: chosen from config.json `architectures`
    tp: int = 1
    device: str = "cpu"
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    max_kv_tokens: int | None = None  # CPU pool size (None: a default from the model size)
    mem_fraction: float = 0.85  # CUDA: fraction of free memory after the weights for the KV pool
    chunked_prefill_size: int | None = None  # None: a measured default per device
    max_running: int = 256  # most requests decoding at once
    prefix_cache: bool = True
    cuda_graph: bool = True
    overlap: bool | None = None  # overlap scheduling; None: on for CUDA, off for the CPU
    seed: int = 0
    schedule_policy: SchedulePolicy = "fcfs"  # admission order of waiting requests (or "shortest-first")
    max_wait_steps: int = DEFAULT_MAX_WAIT_STEPS  # shortest-first: steps a request may be passed over
    warmup: bool | None = None  # start-up warm-up of every kernel variant; None: on for CUDA, off for the CPU


class EngineClient(Protocol):
    """What the server needs from a running engine (thread-safe; the model runs elsewhere)."""

    model_name: str
    max_model_len: int

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Submit; raises InvalidRequest at once for a request that can never fit."""
        ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def alive(self) -> bool:
        """False once the engine stopped or failed (its thread, or a TP rank, is gone)."""
        ...

    def shutdown(self) -> None: ...
