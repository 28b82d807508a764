"""A word-level tokenizer for random-weight models at any vocabulary size (no download).

Token i is the word `t{i}`; decoding joins words with spaces. It lets the engine and the
server run (and detokenise) checkpoints built on machines without internet access, such
as the GPU benchmark's random models at real shapes (`tools/bench_shapes.py`).
"""

from __future__ import annotations

from pathlib import Path


def write_word_tokenizer(directory: Path, vocab_size: int, eos_id: int | None = None) -> None:
    """Save tokenizer.json + tokenizer_config.json for `vocab_size` words into `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 2:
        raise ValueError(f"a word tokenizer needs at least 2 tokens, got {vocab_size}")
    vocab = {f"t{i}": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    eos = f"t{eos_id}" if eos_id is not None else None
    fast = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0", eos_token=eos)
    fast.save_pretrained(str(directory))
