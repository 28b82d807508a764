"""Greedy decoding on top of `ModelRunner` (the scheduler-free path used by checks and tools)."""

from __future__ import annotations

from collections.abc import Iterable

from .runner import ModelRunner


def greedy_generate(
    runner: ModelRunner, prompts: list[list[int]], max_new_tokens: int, stop_ids: Iterable[int] = ()
) -> list[list[int]]:
    """Generate up to `max_new_tokens` per prompt, all prompts batched together; stops at `stop_ids`."""
    stops = set(stop_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    logits = runner.extend(dict(enumerate(prompts)))
    live = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        nxt = {}
        for req, lg in zip(live, logits, strict=True):
            tok = int(lg.argmax())
            outputs[req].append(tok)
            if tok not in stops and len(outputs[req]) < max_new_tokens:
                nxt[req] = tok
        for req in live:
            if req not in nxt:
                runner.release(req)
        live = list(nxt)
        if not live:
            break
        logits = runner.decode(nxt)
    return outputs
