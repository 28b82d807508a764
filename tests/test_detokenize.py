"""Incremental detokenisation and stop handling with the demo model's real tokenizer."""

from __future__ import annotations

import pytest
from _helpers import DEMO
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minisgl_decl.engine.api import SamplingParams
from minisgl_decl.engine.detokenize import CONTEXT_TOKENS, OutputText

if not (DEMO / "tokenizer.json").exists():
    pytest.skip(
        f"demo tokenizer missing: run `python tools/prepare_demo_model.py` (looked in {DEMO})", allow_module_level=True
    )

from transformers import AutoTokenizer

TOKENIZER = AutoTokenizer.from_pretrained(str(DEMO))
VOCAB = len(TOKENIZER)
EOS = frozenset({TOKENIZER.eos_token_id})
PIECES = [
    "a",
    "b",
    " ",
    "  ",
    ",",
    ".",
    "\n",
    "the",
    " cat",
    "é",
    "ß",
    "Ω",
    "世",
    "界",
    "日本語",
    "🎉",
    "👍🏽",
    "😀",
    "ก",
    "👨‍👩‍👧",
    "ab",
    "cd",
    "stop",
    "END",
]
texts = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


def encode(text: str) -> list[int]:
    return TOKENIZER.encode(text, add_special_tokens=False)


def decode(ids: list[int], skip: bool = True) -> str:
    return TOKENIZER.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


def stream(out: OutputText, ids: list[int]) -> tuple[list[str], str | None, int]:
    """Feed ids until one finishes the output: (chunks incl. finish(), finish reason, tokens fed)."""
    chunks = []
    for n, token in enumerate(ids, 1):
        chunk, reason = out.append(token)
        chunks.append(chunk)
        if reason is not None:
            return chunks, reason, n
    chunks.append(out.finish())
    return chunks, None, len(ids)


# ------------------------------------------------------------------ the concatenation property


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(st.integers(0, VOCAB - 1), max_size=30),
    prompt=st.lists(st.integers(0, VOCAB - 1), max_size=8),
    skip=st.booleans(),
)
def test_chunks_concatenate_to_the_full_decode_for_any_ids(ids: list[int], prompt: list[int], skip: bool) -> None:
    out = OutputText(TOKENIZER, SamplingParams(skip_special_tokens=skip), prompt, frozenset())
    emitted = ""
    for n, token in enumerate(ids, 1):
        chunk, reason = out.append(token)
        assert reason is None
        emitted += chunk
        so_far = decode(ids[:n], skip)
        # what is emitted is final, and only an unfinished character at the end is held back
        assert so_far.startswith(emitted)
        held = so_far[len(emitted) :]
        assert held == "" or held.endswith("\ufffd"), (so_far, emitted)
    emitted += out.finish()
    assert emitted == decode(ids, skip)
    assert out.text == emitted


@settings(max_examples=150, deadline=None)
@given(text=texts, prompt=texts)
def test_multibyte_text_streams_token_by_token_without_replacement_chars(text: str, prompt: str) -> None:
    ids = encode(text)
    assert decode(ids) == text  # byte-level BPE round-trips any text
    out = OutputText(TOKENIZER, SamplingParams(), encode(prompt), EOS)
    chunks, reason, _ = stream(out, ids)
    assert reason is None
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks), chunks


def test_multibyte_characters_are_split_across_tokens_in_these_tests() -> None:
    """The emoji/CJK pieces really do arrive one byte-token at a time (else the test above proves little)."""
    ids = encode("🎉世界")
    assert any("\ufffd" in decode([t]) for t in ids)


def test_prompt_ending_inside_a_character() -> None:
    whole = encode("日本語")
    k = next(k for k in range(1, len(whole)) if decode(whole[:k]).endswith("\ufffd"))
    prompt, output = whole[:k], [*whole[k:], *encode(" ok")]
    assert decode(prompt).endswith("\ufffd")
    chunks, _, _ = stream(OutputText(TOKENIZER, SamplingParams(), prompt, EOS), output)
    assert "".join(chunks) == decode(output)


def test_cost_per_token_does_not_grow_with_the_output() -> None:
    """Every decode call sees a window of a few tokens, however long the output gets."""
    windows: list[int] = []

    class Counting:
        def decode(self, token_ids: list[int], **kwargs: object) -> str:
            windows.append(len(token_ids))
            return TOKENIZER.decode(token_ids, **kwargs)

    ids = encode("The quick brown fox jumps over the lazy dog. 日本語のテキスト 🎉! " * 40)
    assert len(ids) > 500
    chunks, _, _ = stream(OutputText(Counting(), SamplingParams(), encode("Hello there"), EOS), ids)
    assert "".join(chunks) == decode(ids)
    assert max(windows) <= CONTEXT_TOKENS + 4
    assert len(windows) <= 2 * len(ids) + 2


# ------------------------------------------------------------------ stop strings


def test_stop_string_spanning_tokens_is_cut_and_the_tail_was_held_back() -> None:
    ids = encode("The quick brown fox jumps")
    assert [decode([t]) for t in ids[:3]] == ["The", " quick", " brown"]
    out = OutputText(TOKENIZER, SamplingParams(stop=("ick bro",)), [], EOS)
    assert out.append(ids[0]) == ("The", None)
    assert out.append(ids[1]) == (" qu", None)  # "ick" may start the stop string: held back
    assert out.append(ids[2]) == ("", "stop")
    assert out.text == "The qu"
    assert out.finish() == ""


def test_earliest_stop_string_wins() -> None:
    ids = encode("abc def ghi jkl")
    chunks, reason, _ = stream(OutputText(TOKENIZER, SamplingParams(stop=("ghi", "def", "zzz")), [], EOS), ids)
    assert reason == "stop" and "".join(chunks) == "abc "


def test_held_back_tail_is_released_by_finish() -> None:
    ids = encode("Hello wor")
    out = OutputText(TOKENIZER, SamplingParams(stop=("world!",)), [], EOS)
    chunks = [out.append(t)[0] for t in ids]
    assert "".join(chunks) == "Hello "
    assert out.text == "Hello wor"
    assert out.finish() == "wor"
    assert out.finish() == ""


def test_a_stop_completing_first_wins_over_a_longer_one_that_started_earlier() -> None:
    """Generation halts on the token that completes a stop string; a longer stop that started
    earlier but is still incomplete then never appears in the text, so it cannot cut it."""
    ids = encode("baa")
    assert [decode([t]) for t in ids] == ["ba", "a"]
    out = OutputText(TOKENIZER, SamplingParams(stop=("baa", "a")), [], EOS)
    assert out.append(ids[0]) == ("b", "stop")  # "ba" completes "a" (at 1); "baa" is only a prefix so far
    assert out.text == "b"


def reference_cut(ids: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """What a generation that halts on the first stop string returns: (text, stopped).

    The text is looked at after every token whose decode ends on a whole character (the
    text streamed so far); the first time it contains a stop string the output ends there,
    cut at the earliest occurrence of any stop string in it. Stops that would only complete
    on later tokens do not count: those tokens are never generated.
    """
    full = decode(ids)
    for n in range(1, len(ids) + 1):
        seen = decode(ids[:n])
        if not full.startswith(seen):
            continue  # the last token ends inside a character (U+FFFD): no text for it yet
        found = [i for i in (seen.find(s) for s in stops) if i >= 0]
        if found:
            return seen[: min(found)], True
    return full, False


@settings(max_examples=150, deadline=None)
@given(
    text=texts,
    picks=st.lists(st.tuples(st.integers(0, 80), st.integers(1, 6)), max_size=3),
    extra=st.lists(st.sampled_from(["zz", "🎉x", "stopEND", "界a", "\n\n"]), max_size=2),
)
@example(text="baa", picks=[(0, 3), (1, 1)], extra=[])  # stops "baa", "a": "a" completes first, on token "ba"
@example(text=" cat", picks=[(2, 2), (1, 3)], extra=[])  # "at" and "cat" complete on one token: " "
def test_stop_strings_match_the_reference_cut(text: str, picks: list[tuple[int, int]], extra: list[str]) -> None:
    ids = encode(text)
    full = decode(ids)
    stops = tuple({full[i : i + n] for i, n in picks if i < len(full)} | set(extra))
    expected, stopped = reference_cut(ids, stops)
    out = OutputText(TOKENIZER, SamplingParams(stop=stops), [], EOS)
    emitted = ""
    reason = None
    for token in ids:
        chunk, reason = out.append(token)
        emitted += chunk
        assert expected.startswith(emitted)  # nothing emitted is ever taken back
        if reason is not None:
            break
    if reason is None:
        emitted += out.finish()
    assert emitted == expected
    assert reason == ("stop" if stopped else None)
    assert out.text == expected


# ------------------------------------------------------------------ EOS and stop token ids


@pytest.mark.parametrize("skip", [True, False])
def test_eos_ends_with_stop_and_its_text_is_not_emitted(skip: bool) -> None:
    ids = [*encode("Hi there"), TOKENIZER.eos_token_id, *encode(" more")]
    out = OutputText(TOKENIZER, SamplingParams(skip_special_tokens=skip), encode("Say hi"), EOS)
    chunks, reason, fed = stream(out, ids)
    assert reason == "stop" and fed == len(encode("Hi there")) + 1
    assert "".join(chunks) == "Hi there"


def test_ignore_eos_decodes_it_as_text() -> None:
    ids = [*encode("Hi"), TOKENIZER.eos_token_id, *encode(" more")]
    params = SamplingParams(ignore_eos=True, skip_special_tokens=False)
    chunks, reason, _ = stream(OutputText(TOKENIZER, params, [], EOS), ids)
    assert reason is None
    assert "".join(chunks) == "Hi" + TOKENIZER.eos_token + " more"


def test_eos_releases_held_back_text_and_unfinished_characters() -> None:
    out = OutputText(TOKENIZER, SamplingParams(stop=("world",)), [], EOS)
    chunks, reason, _ = stream(out, [*encode("Hello wor"), TOKENIZER.eos_token_id])
    assert reason == "stop" and "".join(chunks) == "Hello wor" and chunks[-1] == "wor"
    partial = encode("日")[:-1]
    out = OutputText(TOKENIZER, SamplingParams(), [], EOS)
    chunks, reason, _ = stream(out, [*encode("a"), *partial, TOKENIZER.eos_token_id])
    assert reason == "stop" and "".join(chunks) == decode([*encode("a"), *partial])


def test_stop_token_id_ends_the_output() -> None:
    ids = encode("The quick brown fox jumps")
    fox = ids[3]
    assert decode([fox]) == " fox"
    out = OutputText(TOKENIZER, SamplingParams(stop_token_ids=(fox,), skip_special_tokens=False), [], EOS)
    chunks, reason, fed = stream(out, ids)
    assert reason == "stop" and fed == 4 and "".join(chunks) == "The quick brown"


def test_append_after_finish_is_a_bug() -> None:
    out = OutputText(TOKENIZER, SamplingParams(), [], EOS)
    out.append(TOKENIZER.eos_token_id)
    with pytest.raises(RuntimeError):
        out.append(5)
