"""The start-up warm-up (`runtime/warmup.py`): which sizes it runs, and that it changes nothing.

The expected kernel variants are computed here from the launchers' rules written out again
(powers of two, the caps, the MoE block rule, Triton's integer specialisation, the decode
split count), not by calling `minisgl_kernels.buckets`. On the CPU the warm-up is off by
default (no Triton: the torch references compile nothing); `EngineConfig(warmup=True)`
forces it so these tests can watch the kernels' entry points it calls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import cli_generate_ids, tiny_with_demo_tokenizer

import minisgl_kernels as kernels
from minisgl_decl.engine import LLM, EngineConfig, SamplingParams
from minisgl_decl.engine.loader import LoadedModel, load_engine_model
from minisgl_decl.parity.hf_reference import load_reference
from minisgl_decl.runtime.warmup import ModelTraits, WarmStep, enabled, plan_steps

CPU = torch.device("cpu")
VOCAB = 49152


@pytest.fixture(autouse=True)
def _gpu_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launchers' GPU rules, also when the kernel tests ran first in this process and set
    TRITON_INTERPRET=1 (under which the MoE block size is always 16)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


# ---- the launchers' rules, written out again ----


def pow2(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def attention_bucket(max_q: int) -> int:
    return min(pow2(max_q), 4096)


def triton_int(n: int) -> str:
    return "one" if n == 1 else "x16" if n % 16 == 0 else "plain"


def moe_cell(tokens: int, top_k: int, experts: int) -> tuple[int, int, str]:
    pairs = tokens * top_k
    mean = pairs / min(experts, pairs)
    block_m = 16 if mean <= 16 else 32 if mean <= 48 else 64
    return min(pow2(pairs), 16384), block_m, triton_int(pairs)


def row_classes(tokens: int) -> set[str]:
    """The integer classes of `c * tokens` over every model constant c (heads, ...): a token
    count divisible by 16 makes every multiple one, an odd one keeps each multiple's own."""
    if tokens == 1:
        return {"one"}
    return {"x16"} if tokens % 16 == 0 else {"odd"} if tokens % 2 else {"even"}


def cpu_splits(batch: int, kv_heads: int) -> int:
    sms = 4  # minisgl_kernels reports 4 multiprocessors for a non-CUDA device
    programs = batch * kv_heads
    target = sms if 4 * programs >= sms else 2 * sms
    return max(1, min(64, math.ceil(target / programs)))


def gemv_rows(rows: int) -> int | None:
    """A linear layer's GEMV rows bucket (powers of two up to 16; more rows: cuBLAS only)."""
    return pow2(rows) if rows <= 16 else None


def token_cells(tokens: int, moe: tuple[tuple[int, int], ...]) -> set[Any]:
    cells: set[Any] = {("rows", c) for c in row_classes(tokens)} | {("gemv", gemv_rows(tokens))}
    cells |= {("moe", k, e, moe_cell(tokens, k, e)) for k, e in moe}
    return cells


def decode_cells(batch: int, moe: tuple[tuple[int, int], ...], kv_heads: tuple[int, ...]) -> set[Any]:
    return token_cells(batch, moe) | {("splits", h, cpu_splits(batch, h)) for h in kv_heads}


def expected_cells(
    max_prefill: int, max_tokens: int, max_decodes: int, moe: tuple[tuple[int, int], ...], kv: tuple[int, ...]
) -> tuple[set[int], set[Any], set[Any]]:
    """(attention buckets, token cells of extend steps, cells of decode steps) a real step can hit."""
    buckets = {attention_bucket(p) for p in range(2, max_prefill + 1)}
    tokens: set[Any] = set()
    for t in range(2, max_tokens + 1) if max_prefill >= 2 else ():  # 1-token chunks: no extend step
        tokens |= token_cells(t, moe)
    decodes: set[Any] = set()
    for b in range(1, max_decodes + 1):
        decodes |= decode_cells(b, moe, kv)
    return buckets, tokens, decodes


def planned_cells(
    steps: list[WarmStep], moe: tuple[tuple[int, int], ...], kv: tuple[int, ...]
) -> tuple[set[int], set[Any], set[Any]]:
    buckets = {attention_bucket(s.prefill) for s in steps if s.prefill}
    tokens: set[Any] = set()
    decodes: set[Any] = set()
    for s in steps:
        if s.prefill:
            tokens |= token_cells(s.tokens, moe)
        else:
            decodes |= decode_cells(s.decodes, moe, kv)
    return buckets, tokens, decodes


@pytest.mark.parametrize(
    ("chunk", "rows", "moe", "kv"),
    [
        (2048, 256, (), (8,)),  # Llama-3-8B serving defaults on CUDA
        (2048, 64, ((8, 128),), (4,)),  # Qwen3-30B-A3B, the 64-request bench
        (2048, 256, ((2, 8), (6, 64)), (2, 8)),  # two MoE shapes, two attention shapes
        (100, 5, ((2, 6),), (2,)),  # a chunk that is not a power of two
        (1, 4, (), (2,)),  # one-token chunks: decode steps only
    ],
)
def test_plan_meets_every_variant_a_step_can_hit(
    chunk: int, rows: int, moe: tuple[tuple[int, int], ...], kv: tuple[int, ...]
) -> None:
    max_tokens = chunk + rows - 1
    steps = plan_steps(chunk, max_tokens, rows, ModelTraits(moe, kv), CPU)
    assert planned_cells(steps, moe, kv) == expected_cells(chunk, max_tokens, rows, moe, kv)
    for s in steps:  # every step is one the engine could run
        assert s.prefill == 0 or 2 <= s.prefill <= chunk
        assert s.tokens <= max_tokens and s.decodes <= (rows if not s.prefill else rows - 1)
    # extend attention: the longest prompt of each bucket, in order
    prefills = [s.prefill for s in steps if s.prefill and not s.decodes]
    assert prefills[: len({attention_bucket(p) for p in range(2, chunk + 1)})] == sorted(
        {min(chunk, attention_bucket(p)) for p in range(2, chunk + 1)}, reverse=True
    )
    assert len(steps) == len(set(steps))


def test_plan_stays_small() -> None:
    """A few dozen forwards, not one per size (the 8B dense shape: buckets + a handful)."""
    dense = plan_steps(2048, 2048 + 255, 256, ModelTraits((), (8,)), CPU)
    assert len(dense) <= 40
    moe = plan_steps(2048, 2048 + 63, 64, ModelTraits(((8, 128),), (4,)), CPU)
    assert len(moe) <= 70


def test_default_is_on_for_cuda_only() -> None:
    assert enabled(None, torch.device("cuda")) and not enabled(None, CPU)
    assert enabled(True, CPU) and not enabled(False, torch.device("cuda"))


# ---- the warm-up in the engine (tiny random models, CPU) ----

CHUNK, ROWS = 160, 6


@pytest.fixture(scope="module", params=["llama", "qwen3_moe"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    spec = str(request.param)
    out = tmp_path_factory.mktemp(f"warm-{spec}")
    return spec, tiny_with_demo_tokenizer(spec, {"vocab_size": VOCAB, "bos_token_id": 1, "eos_token_id": 2}, 4, out)


def config(model: Path, warmup: bool) -> EngineConfig:
    return EngineConfig(
        model=model, warmup=warmup, chunked_prefill_size=CHUNK, max_running=ROWS, max_kv_tokens=1024, max_model_len=256
    )


class Spy:
    """Records the sizes the model's layers pass to the kernels' entry points."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.extend_q: list[int] = []
        self.moe_tokens: list[int] = []
        self.decode_batches: list[int] = []
        self.rows: list[int] = []
        for name, record in (
            ("extend_attention", lambda a, kw: self.extend_q.append(int(kw["max_seqlen_q"]))),
            ("fused_moe", lambda a, kw: self.moe_tokens.append(a[0].shape[0])),
            ("decode_attention", lambda a, kw: self.decode_batches.append(a[0].shape[0])),
            ("add_rmsnorm", lambda a, kw: self.rows.append(a[0].reshape(-1, a[0].shape[-1]).shape[0])),
        ):
            monkeypatch.setattr(kernels, name, self._wrap(getattr(kernels, name), record))

    @staticmethod
    def _wrap(fn: Any, record: Any) -> Any:
        def spied(*args: Any, **kw: Any) -> Any:
            record(args, kw)
            return fn(*args, **kw)

        return spied


def test_engine_warm_up_runs_every_variant_through_the_kernels(
    tiny: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, model = tiny
    loaded = load_engine_model(config(model, True), progress=False)
    spy = Spy(monkeypatch)
    LLM(config(model, True), loaded=loaded)
    cfg = json.loads((model / "config.json").read_text())
    experts = cfg.get("num_local_experts", cfg.get("num_experts"))  # transformers 5 saves the former
    moe = ((cfg["num_experts_per_tok"], experts),) if spec == "qwen3_moe" else ()
    kv = (cfg["num_key_value_heads"],)
    buckets, tokens, decodes = expected_cells(CHUNK, CHUNK + ROWS - 1, ROWS, moe, kv)
    assert {attention_bucket(q) for q in spy.extend_q} == buckets
    seen_decode: set[Any] = set()
    for b in spy.decode_batches:
        seen_decode |= decode_cells(b, moe, kv)
    assert seen_decode == decodes
    if moe:  # every token count the MoE layers saw, extend and decode
        seen: set[Any] = set()
        for t in spy.moe_tokens:
            seen |= {c for c in token_cells(t, moe) if c[0] == "moe"}
        assert seen == {c for c in tokens | decodes if c[0] == "moe"}
    seen_rows: set[Any] = set()  # every layer's rows: the norms and the linear layers (GEMV buckets)
    for n in spy.rows:
        seen_rows |= {c for c in token_cells(n, ()) if c[0] in ("rows", "gemv")}
    assert seen_rows == {c for c in tokens | decodes if c[0] in ("rows", "gemv")}
    assert max(spy.extend_q) == CHUNK and max(spy.rows) == CHUNK + ROWS - 1  # a full chunk with decodes riding


def test_no_warm_up_on_the_cpu_by_default(tiny: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, model = tiny
    loaded = load_engine_model(config(model, True), progress=False)
    spy = Spy(monkeypatch)
    LLM(EngineConfig(model=model, max_kv_tokens=1024), loaded=loaded)
    assert not spy.extend_q and not spy.decode_batches and not spy.rows


def greedy_reference(model: Path, spec: str, prompts: list[list[int]], new: int) -> list[list[int]]:
    hf = load_reference(model, "Qwen3MoeForCausalLM" if spec == "qwen3_moe" else "LlamaForCausalLM")
    out = []
    for p in prompts:
        with torch.inference_mode():
            ids = hf.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=2, pad_token_id=2)
        out.append(ids[0, len(p) :].tolist())
    return out


def fresh_state(llm: LLM) -> Iterator[Any]:
    core = llm.core
    runner = core.runner
    yield list(runner.pool.free)
    yield bool(runner.req_to_token.any())
    yield core.cache.size if core.cache is not None else None
    yield core.stats()
    yield (core.sched.admit_steps, list(core.sched.free_rows), core.sched.preemptions)


def test_after_warm_up_state_is_untouched_and_output_equals_transformers(tiny: tuple[str, Path]) -> None:
    spec, model = tiny
    loaded: LoadedModel = load_engine_model(config(model, True), progress=False)
    warm, cold = LLM(config(model, True), loaded=loaded), LLM(config(model, False), loaded=loaded)
    assert list(fresh_state(warm)) == list(fresh_state(cold))  # pool free list (order too), table, cache, counters
    gen = torch.Generator().manual_seed(1)
    shared = torch.randint(3, VOCAB, (7,), generator=gen).tolist()
    prompts = [shared + torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (5, 150, 1, 40)]
    new = 10
    expected = greedy_reference(model, spec, prompts, new)
    greedy = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
    outs = warm.generate(prompts, greedy)  # batched: a long prompt in chunks, mixed steps, cache hits
    assert [list(o.token_ids) for o in outs] == expected
    assert sum(o.cached_tokens for o in outs) > 0


@pytest.mark.slow
def test_tp2_ranks_warm_up_together_and_give_the_tokens_of_tp1(tmp_path: Path) -> None:
    """Every rank runs the same warm-up forwards (their all-reduces pair up), then serves as before."""
    overrides = {"vocab_size": VOCAB, "num_hidden_layers": 2, "bos_token_id": 1, "eos_token_id": 2}
    model = tiny_with_demo_tokenizer("llama", overrides, 6, tmp_path)
    prompts = ["The tide comes in and", "Seven sailors sat on a"]
    common = ("--max-tokens", "12", "--max-kv-tokens", "400")
    plain = cli_generate_ids(model, prompts, 1, *common)
    warm = cli_generate_ids(model, prompts, 2, *common, "--warmup", "on", "--schedule-policy", "shortest-first")
    assert warm == plain
