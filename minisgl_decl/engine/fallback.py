"""Greedy sampler and whole-text detokeniser with the interfaces of `sampling.py`/`detokenize.py`.

Used until those modules exist in this checkout (they come from another branch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .api import FinishReason, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprob: TokenLogprob | None


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size, self.device = vocab_size, device

    def add(self, key: int, params: SamplingParams, prompt_ids: Sequence[int]) -> None:
        pass

    def remove(self, key: int) -> None:
        pass

    def sample(self, logits: torch.Tensor, keys: Sequence[int]) -> list[SampledToken]:
        return [SampledToken(t, None) for t in logits.argmax(dim=-1).tolist()]


class OutputText:
    def __init__(self, tokenizer: Any, params: SamplingParams, prompt_ids: Sequence[int],
                 eos_ids: frozenset[int]) -> None:
        self.tok, self.params = tokenizer, params
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))
        self.ids: list[int] = []
        self.sent = 0

    def _text(self) -> str:
        return str(self.tok.decode(self.ids, skip_special_tokens=self.params.skip_special_tokens))

    def append(self, token_id: int) -> tuple[str, FinishReason | None]:
        if token_id in self.stop_ids:
            return self.finish(), "stop"
        self.ids.append(token_id)
        text = self._text()
        for s in self.params.stop:
            at = text.find(s)
            if at >= 0:
                out = text[self.sent : at] if at >= self.sent else ""
                self.sent = len(text)
                return out, "stop"
        end = len(text)
        while end > self.sent and text[end - 1] == "\ufffd":
            end -= 1
        hold = max((len(s) - 1 for s in self.params.stop), default=0)
        end = max(self.sent, end - hold)
        out = text[self.sent : end]
        self.sent = end
        return out, None

    def finish(self) -> str:
        text = self._text()
        out = text[self.sent :]
        self.sent = len(text)
        return out
