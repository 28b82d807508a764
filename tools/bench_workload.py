"""The pure half of `tools/bench_serve.py`: length distributions, synthetic prompts, percentiles.

A workload is a fixed-seed list of `BenchRequest`s: each prompt is a list of token ids drawn
uniformly from the tokenizer's ordinary (non-special) vocabulary, so its length is exact by
construction (it is sent as a token-id prompt to `/v1/completions` and given as-is to
transformers `generate`); each request asks for an exact number of output tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_LEN = 1 << 20


class BenchArgError(ValueError):
    """A bad benchmark argument; the message says what is allowed."""


@dataclass(frozen=True)
class LengthDist:
    """`N` (always N) or `LO:HI` (uniform over the integers LO..HI, both included)."""

    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str, name: str) -> LengthDist:
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or len(values) != len(parts):
            raise BenchArgError(f"{name} must be N or LO:HI (integers), got {text!r}")
        lo, hi = values[0], values[-1]
        if not 1 <= lo <= hi <= MAX_LEN:
            raise BenchArgError(f"{name} must satisfy 1 <= LO <= HI <= {MAX_LEN}, got {text!r}")
        return cls(lo, hi)

    def sample(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi} (uniform)"


@dataclass(frozen=True)
class BenchRequest:
    prompt_ids: tuple[int, ...]
    output_len: int


def ordinary_token_ids(tokenizer: Any) -> list[int]:
    """Every id of the tokenizer's vocabulary that is not a special or added token."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ids = [i for i in range(len(tokenizer)) if i not in special]
    if not ids:
        raise BenchArgError("the tokenizer has no ordinary (non-special) tokens to build prompts from")
    return ids


def make_workload(
    tokenizer: Any, num_requests: int, input_len: LengthDist, output_len: LengthDist, seed: int
) -> list[BenchRequest]:
    """The same `seed` (and tokenizer) gives the same prompts and lengths."""
    rng = random.Random(seed)
    pool = ordinary_token_ids(tokenizer)
    out = []
    for _ in range(num_requests):
        n_in, n_out = input_len.sample(rng), output_len.sample(rng)
        out.append(BenchRequest(tuple(rng.choice(pool) for _ in range(n_in)), n_out))
    return out


def arrival_offsets(n: int, request_rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: Poisson arrivals at `request_rate`/s; inf: all at 0."""
    if request_rate <= 0 or math.isnan(request_rate):
        raise BenchArgError(f"--request-rate must be > 0 (or inf), got {request_rate}")
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed ^ 0x5EED)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(request_rate)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default); nan if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (nan when there are no values)."""
    mean = sum(values) / len(values) if values else math.nan
    return {"mean": mean, "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99)}
