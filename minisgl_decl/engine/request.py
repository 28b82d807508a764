"""One request's state inside the engine (owned by the engine thread)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api import FinishReason, SamplingParams
from .radix import Node


@dataclass(eq=False)
class Request:
    """waiting -> running (prefill chunks, then one token a step) -> finished.

    `tokens` = prompt + output. The first `len(slots)` tokens have their KV in `slots`; the
    rest (`pending`) run in the next steps: a chunk of the prompt, or the last sampled token.
    `slots[:cache_len]` belong to the prefix cache (the request locks `node`); the rest are
    the request's own. A preempted request loses its slots and keeps its output, so its
    recompute (prompt + output so far) continues exactly where it stopped.

    Under overlap scheduling the newest output token may not be known on the host yet: it
    is then a placeholder `-(k + 1)`, "the k-th token sampled by the step in flight", which
    the runner replaces on the device (`ModelRunner.run(step, prev=...)`). `resolved` counts
    the output tokens the host knows (all of them without overlap).
    """

    key: int
    request_id: str
    prompt: list[int]
    params: SamplingParams
    text: Any  # OutputText
    output: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    row: int = -1
    node: Node | None = None
    cache_len: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache served at first admission
    admitted: bool = False
    writes: list[tuple[int, int]] = field(default_factory=list)  # (position, slot) table writes not yet sent
    finish_reason: FinishReason | None = None
    sent_tokens: int = 0  # output tokens already reported
    resolved: int = 0  # output tokens known on the host (the rest are placeholders of the step in flight)

    @property
    def total(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def final(self) -> bool:
        """Its last token is sampled (max_tokens reached): nothing more to run, only to report."""
        return len(self.output) >= self.params.max_tokens

    @property
    def pending(self) -> int:
        return self.total - len(self.slots)

    def tokens(self, start: int, stop: int) -> list[int]:
        p = len(self.prompt)
        if stop <= p:
            return self.prompt[start:stop]
        if start >= p:
            return self.output[start - p : stop - p]
        return self.prompt[start:] + self.output[: stop - p]
