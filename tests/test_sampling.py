"""Batched sampler against obvious per-row references written here (explicit loops, sorted lists)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minisgl_decl.engine.api import InvalidRequest, SamplingParams
from minisgl_decl.engine.sampling import Sampler, _top_p_keep

CPU = torch.device("cpu")


def _logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------ references (plain Python)


def ref_penalized(row: list[float], params: SamplingParams, prompt: list[int], outputs: list[int]) -> list[float]:
    """HF repetition penalty over prompt+outputs, OpenAI frequency/presence over outputs, then logit_bias."""
    counts = Counter(outputs)
    seen = set(prompt) | set(outputs)
    out = []
    for t, v in enumerate(row):
        if t in seen:
            v = v / params.repetition_penalty if v > 0 else v * params.repetition_penalty
        v -= counts[t] * params.frequency_penalty + (1.0 if counts[t] > 0 else 0.0) * params.presence_penalty
        v += params.logit_bias.get(t, 0.0)
        out.append(v)
    return out


def ref_allowed(row: list[float], params: SamplingParams, tol: float = 1e-4) -> set[int]:
    """Tokens top-k, then top-p, then min-p may return (generous by `tol` at the boundaries)."""
    scaled = [v / params.temperature for v in row]
    order = sorted(range(len(row)), key=lambda t: -scaled[t])
    keep = set(order)
    if params.top_k > 0:
        kth = scaled[order[min(params.top_k, len(row)) - 1]]
        keep = {t for t in keep if scaled[t] >= kth}
    top = max(scaled)
    weights = {t: math.exp(scaled[t] - top) for t in keep}
    total = sum(weights.values())
    if params.top_p < 1.0:
        kept, before = set(), 0.0
        for t in sorted(keep, key=lambda t: -scaled[t]):
            if before >= params.top_p + tol:
                break
            kept.add(t)
            before += weights[t] / total
        keep = kept
    if params.min_p > 0.0:
        keep = {t for t in keep if weights[t] >= params.min_p * 1.0 * (1 - tol)}  # weight of the top token is 1
    return keep


# ------------------------------------------------------------------ greedy, logprobs


def test_greedy_is_argmax_for_any_dtype() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        sampler = Sampler(1000, CPU)
        for key in range(7):
            sampler.add(key, SamplingParams(temperature=0.0), [1, 2, 3])
        logits = _logits(7, 1000, seed=1).to(dtype)
        got = [s.token_id for s in sampler.sample(logits, list(range(7)))]
        want = [max(range(1000), key=lambda t, r=r: float(logits[r, t])) for r in range(7)]
        assert got == want
        assert all(s.logprob is None for s in sampler.sample(logits, list(range(7))))


def test_greedy_rows_exact_in_a_mixed_batch() -> None:
    sampler = Sampler(500, CPU)
    sampler.add(10, SamplingParams(temperature=0.0), [])
    sampler.add(11, SamplingParams(temperature=1.3, top_p=0.5), [])
    sampler.add(12, SamplingParams(temperature=0.9, top_k=1), [])  # top_k 1 is greedy too
    for step in range(5):
        logits = _logits(3, 500, seed=step)
        out = sampler.sample(logits, [10, 11, 12])
        assert out[0].token_id == int(logits[0].argmax())
        assert out[2].token_id == int(logits[2].argmax())


def test_logprobs_are_log_softmax_of_raw_logits_with_sorted_alternatives() -> None:
    vocab = 50
    sampler = Sampler(vocab, CPU)
    sampler.add(
        1,
        SamplingParams(
            temperature=0.8, logprobs=True, top_logprobs=5, repetition_penalty=1.7, logit_bias={3: 4.0}, seed=5
        ),
        [3, 4],
    )
    sampler.add(2, SamplingParams(temperature=0.0), [])
    sampler.add(3, SamplingParams(temperature=0.0, logprobs=True), [])
    logits = _logits(3, vocab, seed=9)
    out = sampler.sample(logits, [1, 2, 3])
    for r in (0, 2):
        row = [float(v) for v in logits[r].double()]
        lse = math.log(sum(math.exp(v) for v in row))
        lp = out[r].logprob
        assert lp is not None and lp.token_id == out[r].token_id
        assert lp.logprob == pytest.approx(row[lp.token_id] - lse, abs=1e-4)
        ranked = sorted(range(vocab), key=lambda t, row=row: -row[t])
        if r == 0:
            assert [t for t, _ in lp.top] == ranked[:5]
            for t, v in lp.top:
                assert v == pytest.approx(row[t] - lse, abs=1e-4)
        else:
            assert lp.top == ()
    assert out[1].logprob is None


# ------------------------------------------------------------------ penalties and bias


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rep=st.sampled_from([1.0, 0.5, 1.3, 2.0]),
    freq=st.sampled_from([0.0, -0.7, 0.4, 1.5]),
    pres=st.sampled_from([0.0, -1.0, 0.6, 2.0]),
    prompt=st.lists(st.integers(0, 7), max_size=6),
    bias=st.dictionaries(st.integers(0, 7), st.floats(-3, 3), max_size=3),
)
def test_penalties_and_bias_match_reference(
    seed: int, rep: float, freq: float, pres: float, prompt: list[int], bias: dict[int, float]
) -> None:
    """Greedy over penalised logits, step after step, equals the argmax of the reference logits."""
    vocab = 8
    params = SamplingParams(
        temperature=0.0, repetition_penalty=rep, frequency_penalty=freq, presence_penalty=pres, logit_bias=bias
    )
    sampler = Sampler(vocab, CPU)
    sampler.add(0, SamplingParams(temperature=0.0), [])  # a neighbour without penalties
    sampler.add(1, params, prompt)
    outputs: list[int] = []
    for step in range(6):
        logits = _logits(2, vocab, seed=seed * 31 + step, scale=1.5)
        got = sampler.sample(logits, [0, 1] if step % 2 else [1, 0])
        row = 1 if step % 2 else 0
        token = got[row].token_id
        ref = ref_penalized([float(v) for v in logits[row]], params, prompt, outputs)
        best = max(ref)
        assume(sorted(ref)[-2] < best - 1e-4)  # no near-tie
        assert ref[token] == best
        outputs.append(token)


def test_frequency_penalty_cycles_through_tokens_across_buffer_growth() -> None:
    """Each request's counts are its own, also after the penalty buffers grow and slots are reused."""
    vocab = 5
    base = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1])
    sampler = Sampler(vocab, CPU)
    params = SamplingParams(temperature=0.0, frequency_penalty=2.0)
    seqs: dict[int, list[int]] = {}
    for key in range(20):  # more than the initial capacity of 8
        sampler.add(key, params, [])
        seqs[key] = []
        if key % 3 == 2:
            sampler.remove(key - 1)
            del seqs[key - 1]
        keys = sorted(seqs)
        for s, k in zip(sampler.sample(base.repeat(len(keys), 1), keys), keys, strict=True):
            seqs[k].append(s.token_id)
    for key, seq in seqs.items():
        assert seq == [i % vocab for i in range(len(seq))], key


def test_logit_bias_forces_and_forbids_tokens() -> None:
    vocab = 300
    sampler = Sampler(vocab, CPU)
    sampler.add(1, SamplingParams(temperature=1.0, logit_bias={123: 100.0}), [])
    logits = _logits(1, vocab, seed=4)
    top = int(logits[0].argmax())
    sampler.add(2, SamplingParams(temperature=0.0, logit_bias={top: -100.0}), [])
    for _ in range(20):
        a, b = sampler.sample(logits.repeat(2, 1), [1, 2])
        assert a.token_id == 123
        assert b.token_id == int(logits[0].sort(descending=True).indices[1])


def test_logit_bias_outside_vocabulary_is_a_request_error() -> None:
    with pytest.raises(InvalidRequest) as err:
        Sampler(10, CPU).add(1, SamplingParams(logit_bias={10: 1.0}), [])
    assert err.value.param == "logit_bias"


# ------------------------------------------------------------------ filters never leave the allowed set


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([0.3, 1.0, 2.5]),
    top_k=st.sampled_from([0, 1, 2, 5, 11]),
    top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2, 0.01]),
    min_p=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    scale=st.sampled_from([0.1, 2.0, 8.0]),
)
def test_filters_never_sample_outside_the_allowed_set(
    seed: int, temperature: float, top_k: int, top_p: float, min_p: float, scale: float
) -> None:
    vocab, draws = 12, 64
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    row = _logits(1, vocab, seed=seed, scale=scale)
    allowed = ref_allowed([float(v) for v in row[0].double()], params)
    sampler = Sampler(vocab, CPU, seed=seed)
    for key in range(draws):
        sampler.add(key, params, [])
    got = sampler.sample(row.repeat(draws, 1), list(range(draws)))
    assert {s.token_id for s in got} <= allowed


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    top_p=st.floats(0.01, 0.999),
    levels=st.sampled_from([0, 3, 20]),
    scale=st.sampled_from([0.3, 3.0, 30.0]),
)
def test_top_p_radix_select_keeps_exactly_the_nucleus(seed: int, top_p: float, levels: int, scale: float) -> None:
    """Keep token i iff the mass of strictly more likely tokens is below top_p (ties kept together)."""
    logits = _logits(3, 60, seed=seed, scale=scale)
    if levels:  # quantised logits: many exact ties
        logits = (logits * levels).round() / levels
    probs = logits.softmax(-1)
    keep = _top_p_keep(probs, torch.full((3, 1), top_p, dtype=torch.float64))
    for r in range(3):
        p = [float(v) for v in probs[r]]
        want = [sum(q for q in p if q > pi) < top_p for pi in p]
        margin = min(abs(sum(q for q in p if q > pi) - top_p) for pi in p)
        assume(margin > 1e-9)  # float summation order may decide a token sitting exactly at the boundary
        assert keep[r].tolist() == want


def _chi_square(counts: Counter[int], probs: list[float], n: int) -> float:
    return sum((counts[t] - n * p) ** 2 / (n * p) for t, p in enumerate(probs) if p > 0)


def test_temperature_sampling_matches_softmax_frequencies() -> None:
    vocab, temperature, rows, steps = 6, 0.7, 2000, 10
    base = torch.tensor([1.0, 0.5, 0.0, -0.5, 0.3, -1.2])
    weights = [math.exp(float(v) / temperature) for v in base]
    probs = [w / sum(weights) for w in weights]
    sampler = Sampler(vocab, CPU, seed=1234)
    for key in range(rows):
        sampler.add(key, SamplingParams(temperature=temperature), [])
    counts: Counter[int] = Counter()
    for _ in range(steps):
        counts.update(s.token_id for s in sampler.sample(base.repeat(rows, 1), list(range(rows))))
    assert _chi_square(counts, probs, rows * steps) < 20.5  # chi-square, 5 dof, p = 0.001


def test_top_k_and_top_p_renormalise_the_kept_tokens() -> None:
    """Frequencies over the kept tokens follow their renormalised softmax; the rest never appear."""
    vocab, rows, steps = 8, 2000, 10
    base = torch.tensor([2.0, 1.5, 1.0, 0.8, 0.0, -1.0, -2.0, -3.0])
    weights = [math.exp(float(v)) for v in base]
    for params, kept in ((SamplingParams(top_k=3), 3), (SamplingParams(top_p=0.7), 3), (SamplingParams(min_p=0.35), 3)):
        # top_p 0.7: cumulative before the 3rd token is 0.65 (< 0.7), before the 4th 0.79;
        # min_p 0.35: the 3rd token's probability is 0.37 of the top one's, the 4th's 0.30
        probs = [w / sum(weights[:kept]) if t < kept else 0.0 for t, w in enumerate(weights)]
        sampler = Sampler(vocab, CPU, seed=99)
        for key in range(rows):
            sampler.add(key, params, [])
        counts: Counter[int] = Counter()
        for _ in range(steps):
            counts.update(s.token_id for s in sampler.sample(base.repeat(rows, 1), list(range(rows))))
        assert set(counts) == set(range(kept)), params
        assert _chi_square(counts, probs, rows * steps) < 13.8  # 2 dof, p = 0.001


# ------------------------------------------------------------------ seeds


def _run_seeded(batch_before: int, batch_after: int, other: SamplingParams, seed: int = 42) -> list[int]:
    vocab = 2000
    params = SamplingParams(temperature=1.0, top_p=0.95, top_k=500, seed=seed)
    sampler = Sampler(vocab, CPU, seed=batch_before * 7 + batch_after)
    keys = [*range(100, 100 + batch_before), 7, *range(200, 200 + batch_after)]
    for key in keys:
        sampler.add(key, params if key == 7 else other, [1, 2])
    tokens = []
    for step in range(8):
        logits = _logits(len(keys), vocab, seed=1000 + step * 13 + len(keys), scale=0.5)
        logits[batch_before] = _logits(1, vocab, seed=step, scale=0.5)[0]  # the seeded row's logits
        tokens.append(sampler.sample(logits, keys)[batch_before].token_id)
    return tokens


def test_seed_gives_the_same_tokens_whatever_the_batch() -> None:
    alone = _run_seeded(0, 0, SamplingParams())
    assert _run_seeded(3, 2, SamplingParams(temperature=0.9)) == alone
    assert _run_seeded(5, 0, SamplingParams(temperature=1.1, seed=42, top_k=3)) == alone  # same seed elsewhere
    assert _run_seeded(1, 6, SamplingParams(temperature=0.0, repetition_penalty=1.2)) == alone
    assert _run_seeded(0, 0, SamplingParams(), seed=43) != alone


def test_unseeded_requests_differ() -> None:
    sampler = Sampler(1000, CPU)
    sampler.add(1, SamplingParams(temperature=1.0), [])
    sampler.add(2, SamplingParams(temperature=1.0), [])
    logits = torch.zeros(2, 1000)
    pairs = [tuple(s.token_id for s in sampler.sample(logits, [1, 2])) for _ in range(5)]
    assert any(a != b for a, b in pairs)


# ------------------------------------------------------------------ one host transfer per step

_SYNCING = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "__iter__")


def test_one_host_transfer_per_sample_call(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = Sampler(300, CPU)
    all_features = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, top_k=20, top_p=0.8, min_p=0.05, seed=3),
        SamplingParams(
            temperature=1.2,
            repetition_penalty=1.3,
            frequency_penalty=0.5,
            presence_penalty=0.2,
            logit_bias={5: 2.0},
            logprobs=True,
            top_logprobs=4,
        ),
        SamplingParams(temperature=0.5, seed=9, logprobs=True),
        SamplingParams(temperature=0.7),
    ]
    for key, params in enumerate(all_features):
        sampler.add(key, params, [1, 2, 3])
    calls: list[str] = []
    for name in _SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(
            self: torch.Tensor, *args: object, _name: str = name, _orig: object = original, **kwargs: object
        ) -> object:
            calls.append(_name)
            return _orig(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, counting)
    for keys in ([0, 1, 2, 3, 4], [4, 0], [2], [1, 3]):
        calls.clear()
        out = sampler.sample(_logits(len(keys), 300, seed=len(keys)), keys)
        assert len(out) == len(keys)
        assert calls == ["tolist"], (keys, calls)


@pytest.mark.gpu
def test_one_device_to_host_copy_per_step_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    sampler = Sampler(32000, device)
    sampler.add(0, SamplingParams(temperature=0.0), [1])
    sampler.add(
        1,
        SamplingParams(
            temperature=0.8,
            top_k=20,
            top_p=0.8,
            min_p=0.05,
            seed=3,
            logprobs=True,
            top_logprobs=3,
            repetition_penalty=1.2,
            logit_bias={5: 1.0},
        ),
        [1, 2],
    )
    sampler.add(2, SamplingParams(temperature=0.9), [])
    logits = torch.randn(3, 32000, device=device)
    sampler.sample(logits, [0, 1, 2])  # warm-up
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        sampler.sample(logits, [0, 1, 2])
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert sum("DtoH" in n or "Device -> Pageable" in n or "Device -> Pinned" in n for n in names) == 1, names
