"""OpenAI response bodies and stream chunks, built from engine deltas.

One `Choices` accumulates a request's deltas per choice index; it renders the final
non-streamed body, each stream chunk, and the usage block (prompt tokens counted once per
prompt, completion tokens summed over choices).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine.api import RequestOutput, TokenLogprob
from .prepare import Job

Kind = Literal["completion", "chat"]


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    sent_role: bool = False
    chars: int = 0  # length of the text so far (the completion logprobs' text_offset)


class Choices:
    def __init__(self, kind: Kind, model: str, request_id: str, jobs: list[Job], tokenizer: Any) -> None:
        self.kind = kind
        self.model = model
        self.id = f"{'cmpl' if kind == 'completion' else 'chatcmpl'}-{request_id}"
        self.created = int(time.time())
        self.jobs = jobs
        self.tokenizer = tokenizer
        self.choices = {job.index: _Choice() for job in jobs}
        self.want_logprobs = {job.index: job.params.logprobs for job in jobs}
        self._plain: dict[tuple[int, bool], tuple[str, str]] = {}  # (index, with usage) -> text chunk template

    def add(self, job: Job, out: RequestOutput) -> None:
        c = self.choices[job.index]
        c.text.append(out.text)
        c.chars += len(out.text)
        c.logprobs.extend(out.logprobs or ())
        c.prompt_tokens, c.completion_tokens, c.cached_tokens = (
            out.prompt_tokens,
            out.completion_tokens,
            out.cached_tokens,
        )
        if out.finished:
            c.finish_reason = _finish(out)

    # -- logprobs ---------------------------------------------------------------------------------------------

    def _token(self, tid: int) -> str:
        return str(self.tokenizer.decode([tid]))

    def _completion_logprobs(self, items: list[TokenLogprob], offset: int) -> dict[str, Any]:
        tokens = [self._token(lp.token_id) for lp in items]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{self._token(t): v for t, v in lp.top} for lp in items],
            "text_offset": offsets,
        }

    def _chat_logprobs(self, items: list[TokenLogprob]) -> dict[str, Any]:
        def entry(tid: int, value: float) -> dict[str, Any]:
            text = self._token(tid)
            return {"token": text, "logprob": value, "bytes": list(text.encode())}

        return {
            "content": [
                {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in items
            ]
        }

    def _logprobs(self, index: int, items: list[TokenLogprob], offset: int) -> dict[str, Any] | None:
        if not self.want_logprobs[index]:
            return None
        return self._completion_logprobs(items, offset) if self.kind == "completion" else self._chat_logprobs(items)

    # -- bodies -----------------------------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        prompt = cached = 0
        seen: set[int] = set()
        for job in self.jobs:
            c = self.choices[job.index]
            if job.prompt_index not in seen:
                seen.add(job.prompt_index)
                prompt += c.prompt_tokens
                cached += c.cached_tokens
        completion = sum(c.completion_tokens for c in self.choices.values())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def final(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            text = "".join(c.text)
            lp = self._logprobs(index, c.logprobs, 0)
            if self.kind == "completion":
                choices.append({"index": index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
            else:
                choices.append(
                    {
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": lp,
                        "finish_reason": c.finish_reason,
                    }
                )
        obj = "text_completion" if self.kind == "completion" else "chat.completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }

    def chunk(self, job: Job, out: RequestOutput, with_usage_field: bool) -> str | None:
        """The SSE event for one delta (None when it carries nothing a client would see)."""
        c = self.choices[job.index]
        finish = _finish(out) if out.finished else None
        if not out.text and finish is None and not out.logprobs and (self.kind == "completion" or c.sent_role):
            return None
        if finish is None and not self.want_logprobs[job.index] and (self.kind == "completion" or c.sent_role):
            head, tail = self._template(job.index, with_usage_field)
            return head + json.dumps(out.text, ensure_ascii=False) + tail
        offset = c.chars - len(out.text)
        lp = self._logprobs(job.index, list(out.logprobs or ()), offset)
        if self.kind == "completion":
            choice: dict[str, Any] = {"index": job.index, "text": out.text, "logprobs": lp, "finish_reason": finish}
            obj = "text_completion"
        else:
            delta: dict[str, Any] = {"content": out.text}
            if not c.sent_role:
                delta = {"role": "assistant", **delta}
                c.sent_role = True
            choice = {"index": job.index, "delta": delta, "logprobs": lp, "finish_reason": finish}
            obj = "chat.completion.chunk"
        return sse(self._chunk_body(obj, choice, with_usage_field))

    def _chunk_body(self, obj: str, choice: dict[str, Any], with_usage_field: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if with_usage_field:
            body["usage"] = None
        return body

    def _template(self, index: int, with_usage_field: bool) -> tuple[str, str]:
        """The SSE event of a plain text delta (no logprobs, not the last, role sent) around its
        JSON-encoded text: the bytes `sse(body)` gives for that body, built once per choice."""
        key = (index, with_usage_field)
        if key not in self._plain:
            marker = "\x00TEXT\x00"
            if self.kind == "completion":
                choice: dict[str, Any] = {"index": index, "text": marker, "logprobs": None, "finish_reason": None}
                obj = "text_completion"
            else:
                choice = {"index": index, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}
                obj = "chat.completion.chunk"
            body = self._chunk_body(obj, choice, with_usage_field)
            head, _, tail = sse(body).partition(json.dumps(marker))
            self._plain[key] = (head, tail)
        return self._plain[key]

    def usage_chunk(self) -> str:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        return sse(
            {
                "id": self.id,
                "object": obj,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }
        )


def _finish(out: RequestOutput) -> str:
    return "stop" if out.finish_reason in (None, "stop") else str(out.finish_reason)


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
