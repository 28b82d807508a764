"""HTTP bodies -> engine jobs: tokenised prompts and one `SamplingParams` per choice.

Context checks happen here, with the field's name: a prompt that fills the context is a
400 on `prompt`/`messages`, a `max_tokens` that does not fit after the prompt a 400 on
`max_tokens`. Tokenising and chat templates run in a worker thread (never on the event loop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..engine.api import InvalidRequest, SamplingParams
from .errors import APIError, from_invalid_request
from .protocol import ChatCompletionRequest, CompletionRequest, _Sampling

COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI default for /v1/completions
MAX_CHOICES = 256  # prompts x n in one request
_SEED_STRIDE = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class Job:
    index: int  # the choice index in the response
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


def derived_seed(seed: int | None, i: int) -> int | None:
    """Choice i of a request with `seed`: choice 0 keeps the seed, the others get distinct derived ones."""
    if seed is None or i == 0:
        return seed
    return (seed + i * _SEED_STRIDE) % (1 << 63)


def _check_context(n_prompt: int, max_tokens: int | None, limit: int, field: str, max_name: str) -> int:
    if n_prompt == 0:
        raise APIError(400, f"{field} is empty after tokenisation", field, "invalid_value")
    if n_prompt >= limit:
        raise APIError(
            400,
            f"{field} has {n_prompt} tokens; this model's context is {limit} tokens, which leaves no room for output",
            field,
            "context_length_exceeded",
        )
    room = limit - n_prompt
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise APIError(
            400,
            f"{max_name}={max_tokens} does not fit: the prompt has {n_prompt} tokens and the "
            f"context is {limit} tokens (at most {room} output tokens)",
            max_name,
            "context_length_exceeded",
        )
    return max_tokens


def _params(req: _Sampling, max_tokens: int, seed: int | None, logprobs: bool, top: int, vocab: int) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        tid = int(key)
        if not 0 <= tid < vocab:
            raise APIError(
                400,
                f"logit_bias: token id {tid} is outside the vocabulary (0..{vocab - 1})",
                "logit_bias",
                "invalid_value",
            )
        bias[tid] = float(value)
    for tid in req.stop_token_ids or []:
        if not 0 <= tid < vocab:
            raise APIError(
                400,
                f"stop_token_ids: token id {tid} is outside the vocabulary (0..{vocab - 1})",
                "stop_token_ids",
                "invalid_value",
            )
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            temperature=1.0 if req.temperature is None else float(req.temperature),
            top_p=1.0 if req.top_p is None else float(req.top_p),
            top_k=req.top_k,
            min_p=float(req.min_p),
            seed=seed,
            repetition_penalty=float(req.repetition_penalty),
            frequency_penalty=float(req.frequency_penalty),
            presence_penalty=float(req.presence_penalty),
            logit_bias=bias,
            logprobs=logprobs,
            top_logprobs=top,
            stop=req.stop_list(),
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
            skip_special_tokens=req.skip_special_tokens,
        )
    except InvalidRequest as exc:
        raise from_invalid_request(exc) from None


def _jobs(
    req: _Sampling, prompts: list[list[int]], max_tokens: list[int], logprobs: bool, top: int, vocab: int
) -> list[Job]:
    jobs = []
    for p, ids in enumerate(prompts):
        for j in range(req.n):
            params = _params(req, max_tokens[p], derived_seed(req.seed, j), logprobs, top, vocab)
            jobs.append(Job(p * req.n + j, p, ids, params))
    return jobs


def _tokenize_prompts(prompt: Any, tokenizer: Any) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer(prompt)["input_ids"]]
    if all(isinstance(x, int) for x in prompt):
        return [list(prompt)]
    if all(isinstance(x, str) for x in prompt):
        return [tokenizer(x)["input_ids"] for x in prompt]
    return [list(x) for x in prompt]


async def completion_jobs(req: CompletionRequest, tokenizer: Any, max_model_len: int) -> list[Job]:
    count = 1 if isinstance(req.prompt, str) or all(isinstance(x, int) for x in req.prompt) else len(req.prompt)
    if count * req.n > MAX_CHOICES:
        raise APIError(
            400,
            f"{count} prompts x n={req.n} = {count * req.n} choices; at most {MAX_CHOICES} in one request",
            "prompt",
            "invalid_value",
        )
    prompts = await asyncio.to_thread(_tokenize_prompts, req.prompt, tokenizer)
    vocab = len(tokenizer)
    for ids in prompts:
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(
                400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "prompt", "invalid_value"
            )
    wanted = req.max_tokens if req.max_tokens is not None else COMPLETION_DEFAULT_MAX_TOKENS
    explicit = req.max_tokens is not None
    limits = [
        _check_context(
            len(ids),
            wanted if explicit else min(wanted, max(1, max_model_len - len(ids))),
            max_model_len,
            "prompt",
            "max_tokens",
        )
        for ids in prompts
    ]
    top = req.logprobs or 0
    return _jobs(req, prompts, limits, req.logprobs is not None, top, vocab)


def _render_chat(req: ChatCompletionRequest, tokenizer: Any) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError(400, "this model has no chat template; use /v1/completions", "messages", "invalid_value")
    messages = [m.as_template_dict() for m in req.messages]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=req.add_generation_prompt, tokenize=False)
    except Exception as exc:  # the template's own checks (e.g. `raise_exception('roles must alternate')`)
        raise APIError(400, f"messages: the chat template rejected them: {exc}", "messages", "invalid_value") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


async def chat_jobs(req: ChatCompletionRequest, tokenizer: Any, max_model_len: int, kv_tokens: int) -> list[Job]:
    """Without max_tokens a chat reply may use the rest of the context, capped by the KV pool (`kv_tokens`)."""
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", "top_logprobs", "invalid_value")
    ids = await asyncio.to_thread(_render_chat, req, tokenizer)
    wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    name = "max_tokens" if req.max_completion_tokens is None else "max_completion_tokens"
    limit = _check_context(len(ids), wanted, max_model_len, "messages", name)
    if wanted is None and kv_tokens > len(ids):
        limit = min(limit, kv_tokens - len(ids))
    return _jobs(req, [ids], [limit], req.logprobs, req.top_logprobs or 0, len(tokenizer))
