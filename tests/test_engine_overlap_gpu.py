"""Overlap scheduling on the GPU: the engine with CUDA graphs, overlap on vs off, and vs transformers.

A tiny random model built with the transformers class (dense llama and routed-expert
qwen3_moe), a word-level tokenizer of its vocabulary, loaded by the engine in bfloat16 on
CUDA with CUDA graphs. With EOS ignored the scheduler forms the same batches with overlap
on and off (a request that reaches max_tokens is not decoded again in either mode), so the
forwards run the same kernels on the same shapes and the greedy tokens must be
bit-identical; the sampled ids then reach the next step on the device instead of through
the host. Against transformers bf16, the first tokens of each prompt must match where
transformers is confident. Skipped without CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import SPECS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MODELS = ["llama", "qwen3_moe"]


def _checkpoint(name: str, tmp: Path) -> tuple[Path, Any]:
    from minisgl_decl.parity.hf_reference import build_reference, load_reference
    from minisgl_decl.parity.run import quiet_transformers
    from minisgl_decl.parity.tokenizer import write_word_tokenizer
    from minisgl_decl.spec.compile import load_ir

    quiet_transformers()
    spec = load_ir(SPECS / f"{name}.yaml")
    build_reference(spec, None, seed=3, directory=tmp)
    hf = load_reference(tmp, spec.architectures[0])
    write_word_tokenizer(tmp, int(hf.config.vocab_size))
    return tmp, hf


def _run(directory: Path, overlap: bool, prompts: list[list[int]], params: list[Any]) -> list[Any]:
    from minisgl_decl.engine import LLM, EngineConfig

    llm = LLM(
        EngineConfig(
            model=directory, device="cuda", dtype="bfloat16", max_running=8, max_kv_tokens=4096, overlap=overlap
        )
    )
    assert llm.core.overlap is overlap and llm.core.runner.graphs is not None
    try:
        return llm.generate(prompts, params)
    finally:
        llm.close()


@pytest.mark.parametrize("name", MODELS)
def test_overlap_on_and_off_give_bit_identical_greedy_tokens(name: str, tmp_path: Path) -> None:
    from minisgl_decl.engine import SamplingParams

    directory, hf = _checkpoint(name, tmp_path)
    vocab = int(hf.config.vocab_size)
    gen = torch.Generator().manual_seed(21)
    prompts = [
        torch.randint(0, vocab, (int(torch.randint(3, 40, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(7)
    ]
    lengths = [1, 2, 5, 16, 24, 24, 31]  # requests leave at different steps: the batch shrinks
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    on = _run(directory, True, prompts, params)
    off = _run(directory, False, prompts, params)
    assert [o.token_ids for o in on] == [o.token_ids for o in off]
    assert [len(o.token_ids) for o in on] == lengths
    assert all(o.finish_reason == "length" for o in on)

    # against transformers bf16: the first greedy token of every prompt (prefill logits), and the
    # whole continuation wherever transformers' top choice is clear of the runner-up
    hf = hf.to("cuda", torch.bfloat16)
    agree = 0
    for prompt, out in zip(prompts, on, strict=True):
        seq = list(prompt)
        for step, token in enumerate(out.token_ids):
            with torch.no_grad():
                row = hf(torch.tensor([seq], device="cuda"), use_cache=False).logits[0, -1].float()
            top2 = row.topk(2).values
            if int(row.argmax()) != token:
                assert (top2[0] - top2[1]).item() <= 0.02 * (row.max() - row.min()).item(), (prompt, step)
                break
            seq.append(token)
        else:
            agree += 1
    assert agree >= 4


def test_overlap_stops_on_stop_tokens_like_without(tmp_path: Path) -> None:
    """A stop token ends the request at the same token with overlap on (one wasted decode)."""
    from minisgl_decl.engine import SamplingParams

    directory, hf = _checkpoint("llama", tmp_path)
    vocab = int(hf.config.vocab_size)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, vocab, (12,), generator=gen).tolist() for _ in range(4)]
    free = _run(directory, False, prompts, [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)] * 4)
    stops = [o.token_ids[6] for o in free]
    params = [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop_token_ids=(s,)) for s in stops]
    on = _run(directory, True, prompts, params)
    for o, f, s in zip(on, free, stops, strict=True):
        cut = f.token_ids.index(s) + 1
        assert o.token_ids == f.token_ids[:cut] and o.finish_reason == "stop"
