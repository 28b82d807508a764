"""The start-up warm-up on the GPU: after it, a burst of real requests compiles and tunes nothing.

A tiny random model (dense llama, routed-expert qwen3_moe) served by the engine in bf16
with CUDA graphs and overlap (the serving defaults), a prefill chunk of 256 and 8 rows.
After the engine is built (graph capture, then the warm-up), every Triton compile is
recorded (`triton.knobs.runtime.jit_post_compile_hook`) and the autotuners' caches are
counted; then a burst of requests of random prompt lengths (1..700: chunked prompts, mixed
steps, short prompts packed together), random output lengths, and shared prefixes (cache
hits, request-table rewrites, so the eager decode path runs too) must add neither. The
burst's greedy tokens must also equal an engine built without the warm-up (same process:
the tuned configs are shared, so the warm-up must not change what a step computes).
Skipped without CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import SPECS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _checkpoint(name: str, tmp: Path) -> int:
    from minisgl_decl.parity.hf_reference import build_reference
    from minisgl_decl.parity.run import quiet_transformers
    from minisgl_decl.parity.tokenizer import write_word_tokenizer
    from minisgl_decl.plan.checkpoint import load_config
    from minisgl_decl.spec.compile import load_ir

    quiet_transformers()
    build_reference(load_ir(SPECS / f"{name}.yaml"), None, seed=3, directory=tmp)
    vocab = int(dict(load_config(tmp))["vocab_size"])
    write_word_tokenizer(tmp, vocab)
    return vocab


def _autotuned() -> dict[str, int]:
    """Entries in every autotuner cache of the kernels package, and the GEMV-or-cuBLAS choices."""
    import importlib

    from triton.runtime.autotuner import Autotuner

    from minisgl_kernels import gemv_choice

    counts = {"gemv_choice": len(gemv_choice._CHOICE)}
    for module in ("attention_launch", "moe_launch", "gemv_launch"):
        mod = importlib.import_module(f"minisgl_kernels.{module}")
        for attr, value in vars(mod).items():
            tuners = value.items() if isinstance(value, dict) else [("", value)]
            for sub, tuner in tuners:
                if isinstance(tuner, Autotuner):
                    counts[f"{module}.{attr}{sub}"] = len(tuner.cache)
    assert len(counts) > 3, f"autotuners not found in minisgl_kernels: {counts}"
    return counts


def _engine(directory: Path, warmup: bool) -> Any:
    from minisgl_decl.engine import LLM, EngineConfig

    config = EngineConfig(
        model=directory,
        device="cuda",
        dtype="bfloat16",
        max_running=8,
        max_kv_tokens=8192,
        chunked_prefill_size=256,
        max_model_len=1024,
        warmup=warmup,
    )
    return LLM(config)


def _burst(vocab: int) -> tuple[list[list[int]], list[Any]]:
    from minisgl_decl.engine import SamplingParams

    gen = torch.Generator().manual_seed(8)
    shared = torch.randint(0, vocab, (40,), generator=gen).tolist()
    prompts, params = [], []
    for i in range(20):
        n = int(torch.randint(1, 700, (1,), generator=gen))
        body = torch.randint(0, vocab, (n,), generator=gen).tolist()
        prompts.append(shared + body if i % 3 == 0 else body)
        new = int(torch.randint(1, 40, (1,), generator=gen))
        params.append(SamplingParams(max_tokens=new, temperature=0, ignore_eos=True))
    return prompts, params


@pytest.mark.parametrize("name", ["llama", "qwen3_moe"])
def test_a_burst_after_the_warm_up_compiles_and_tunes_nothing(name: str, tmp_path: Path) -> None:
    import triton

    vocab = _checkpoint(name, tmp_path)
    llm = _engine(tmp_path, warmup=True)
    assert llm.core.runner.graphs is not None
    compiled: list[str] = []

    def record(**kw: Any) -> None:
        compiled.append(str(kw.get("repr")))
        return None  # a true value would skip the compile

    tuned = _autotuned()
    prompts, params = _burst(vocab)
    triton.knobs.runtime.jit_post_compile_hook = record
    try:
        warm = llm.generate(prompts, params)
    finally:
        triton.knobs.runtime.jit_post_compile_hook = None
        llm.close()
    assert compiled == [], "compiled while serving:\n" + "\n".join(compiled)
    assert _autotuned() == tuned
    cold = _engine(tmp_path, warmup=False)
    try:
        again = cold.generate(prompts, params)
    finally:
        cold.close()
    assert [o.token_ids for o in warm] == [o.token_ids for o in again]
    assert [len(o.token_ids) for o in warm] == [p.max_tokens for p in params]
