"""Incremental detokenisation and stop handling for one request's output.

Each appended token decodes a small window of ids, never the whole output, so the cost per
token does not grow with the output length:

    ids:  [ ... prompt context ... | out0 out1 ... ]
                     prefix ^        read ^       ^ end
    new text = decode(ids[prefix:end])[len(decode(ids[prefix:read])):]

Decoding starts a few tokens back (`prefix`) so that a token's text is the one it has in
context (leading spaces, byte-level merges); the first window starts in the prompt. When the
decoded window ends in U+FFFD the last token(s) end inside a multi-byte character: nothing is
emitted and the window grows until the character completes (or `finish` releases it as is).
With a byte-level BPE tokenizer (the demo model's), the concatenation of everything returned
equals `tokenizer.decode(output_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)`.

Stop strings are matched on this decoded text, across token boundaries, and cut with what
follows (OpenAI semantics). The output ends on the first token after which the text contains
a stop string, cut at the earliest occurrence of any stop string in it. A stop that would only
complete on a later token does not count, even when it starts earlier ("baa" vs "a" on the
token "ba" gives "b"): generation halts, so that token never comes (vLLM and transformers'
StopStringCriteria likewise check after every token). A match can only start in text not yet
emitted, because the longest suffix that is a prefix of some stop string is held back until
the next token decides it. EOS (unless `ignore_eos`) and `stop_token_ids` end the output
with "stop"; their own text is never emitted, and whatever was held back is released with
that last chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .api import FinishReason, SamplingParams

CONTEXT_TOKENS = 5  # prompt tokens decoded before the output, for in-context token text
_INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    """The part of a transformers tokenizer used here."""

    def decode(
        self, token_ids: list[int], *, skip_special_tokens: bool = ..., clean_up_tokenization_spaces: bool | None = ...
    ) -> str: ...


def window_decoder(tokenizer: Decoder, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """``ids -> tokenizer.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``.

    For a transformers tokenizer backed by `tokenizers` whose decoding is not overridden, that
    call is exactly its Rust `Tokenizer.decode(ids, skip_special_tokens)`; calling it directly
    skips the Python wrapper (input conversion, batch detection), ~3x cheaper per token.
    Anything else (slow tokenizers, subclasses that decode differently, test doubles) goes
    through `decode` itself.
    """
    backend = _plain_backend(tokenizer)
    if backend is not None:
        decode = backend.decode
        return lambda ids: decode(ids, skip_special_tokens)  # type: ignore[no-any-return]

    def slow(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    return slow


def _plain_backend(tokenizer: Any) -> Any:
    """The `tokenizers.Tokenizer` of a transformers `TokenizersBackend` that decodes as its base class does."""
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # pragma: no cover - both are dependencies
        return None
    cls = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend):
        return None
    if cls.decode is not TokenizersBackend.decode or cls._decode is not TokenizersBackend._decode:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


def stop_token_ids(params: SamplingParams, eos_ids: frozenset[int]) -> frozenset[int]:
    """The tokens that end a request's output: its ``stop_token_ids``, and EOS unless ``ignore_eos``."""
    return frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else eos_ids)


class OutputText:
    """One request's output text, fed one token at a time."""

    def __init__(
        self, tokenizer: Decoder, params: SamplingParams, prompt_ids: Sequence[int], eos_ids: frozenset[int]
    ) -> None:
        self._decode = window_decoder(tokenizer, params.skip_special_tokens)
        self._stop_ids = stop_token_ids(params, eos_ids)
        self._stops = tuple(s for s in params.stop if s)
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        context = list(prompt_ids[max(0, len(prompt_ids) - CONTEXT_TOKENS) :])
        if context and self._decode(context).endswith(_INCOMPLETE):
            context = []  # the prompt ends inside a character: its output cannot be decoded in context
        self._ids = context
        self._prefix = 0
        self._read = len(context)
        self._prefix_text: str | None = None  # decode(ids[prefix:read]), computed when first needed
        self._pending = ""  # decoded text held back: it may be the start of a stop string
        self._emitted: list[str] = []
        self._done = False

    @property
    def text(self) -> str:
        """The output text decoded so far (emitted plus held back), stop string excluded."""
        return "".join(self._emitted) + self._pending

    @property
    def finished(self) -> bool:
        return self._done

    def append(self, token_id: int) -> tuple[str, FinishReason | None]:
        """Feed one sampled token: the text now safe to emit, and "stop" when this token ended the output."""
        if self._done:
            raise RuntimeError("OutputText: append after the output finished")
        if token_id in self._stop_ids:
            chunk, _ = self._release(self._decode_new(final=True), final=True)
            self._done = True
            return chunk, "stop"
        self._ids.append(token_id)
        if not self._stops:  # nothing to hold back: emit what decodes
            new = self._decode_new(final=False)
            if new:
                self._emitted.append(new)
            return new, None
        return self._release(self._decode_new(final=False))

    def finish(self) -> str:
        """Release everything held back when the request ends for another reason (length, abort)."""
        if self._done:
            return ""
        chunk, _ = self._release(self._decode_new(final=True), final=True)
        self._done = True
        return chunk

    def _decode_new(self, final: bool) -> str:
        """Text of the tokens since `read`, or "" while they end inside a character (unless final)."""
        if self._read == len(self._ids):
            return ""
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix : self._read])
        window = self._decode(self._ids[self._prefix :])
        if window.endswith(_INCOMPLETE) and not final:
            return ""
        new = window[len(self._prefix_text) :]
        self._prefix, self._read, self._prefix_text = self._read, len(self._ids), None
        return new

    def _release(self, new: str, final: bool = False) -> tuple[str, FinishReason | None]:
        """Add decoded text; emit what can no longer be part of a stop string."""
        text = self._pending + new
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending = ""
            self._done = True
            return self._emit(text[:cut]), "stop"
        keep = 0 if final else self._held_tail(text)
        self._pending = text[len(text) - keep :] if keep else ""
        return self._emit(text[: len(text) - keep]), None

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        for n in range(min(len(text), self._longest_stop - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0

    def _emit(self, chunk: str) -> str:
        if chunk:
            self._emitted.append(chunk)
        return chunk
