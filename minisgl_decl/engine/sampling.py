"""Batched sampling on the device, with one device->host transfer per step for the whole batch.

For the rows of one step (logits `[B, V]`, one row per request key, in `keys` order):

    raw logits ──> log_softmax ─────────────────────────────────> reported logprobs
        └─> repetition penalty   (prompt + output tokens; HF: positive / p, negative * p)
            -> frequency/presence (output tokens; OpenAI: -= f * count + p * [count > 0])
            -> + logit_bias
            -> stop tokens at -inf while fewer than min_tokens were generated (vLLM's min_tokens)
            -> greedy rows (temperature 0, or top_k 1): argmax, exact
            -> sampled rows: / temperature -> top-k -> softmax -> top-p -> min-p -> inverse-CDF draw

Reported logprobs (`logprobs` / `top_logprobs`) are the log-softmax of the model's raw logits
in float32, before penalties, bias and temperature (vLLM's default): they describe the model,
not the sampling transform. Top-k keeps every token tied with the k-th largest logit. Top-p
keeps the smallest set of most likely tokens whose probability reaches `top_p` (at least one;
tokens tied at the boundary are all kept), found by radix select rather than a sort.
Min-p keeps tokens with probability >= min_p * the most likely token's (after temperature).

Randomness: one uniform number per sampled row and step, turned into a token by inverse CDF
(the first token whose cumulative probability exceeds u * total), so no vocabulary-sized
random tensor is drawn. A request with a `seed` owns a `random.Random(seed)` stream that
advances once per sampled step: its tokens depend only on its seed and its own logits, never
on the other rows of the batch or on its position. Unseeded rows draw from one engine-level
device generator (seeded with the `seed` given to the Sampler) in one call.

Host work per step is O(batch): request parameters live in persistent device buffers indexed
by a slot per request; per step only the slot indices travel to the device. Optional stages
(penalties, top-k, top-p, min-p, logprobs, per-request streams) run only when a row of the
batch needs them, decided from host-side key sets without reading anything from the device.
Penalty state (output token counts, prompt+output "seen" mask, dense logit bias) is a
`[rows, V]` buffer for the requests that use it, updated by scatter after each step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .api import InvalidRequest, SamplingParams, TokenLogprob

_TOP_P_DIGITS = ((20, 11), (10, 10), (0, 10))  # (shift, width) of float32 bits; the sign bit is 0
GREEDY_TEMPERATURE = 1e-5  # below this, a temperature is treated as greedy (division would overflow)


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprob: TokenLogprob | None  # set when params.logprobs or params.top_logprobs > 0


@dataclass
class _Row:
    params: SamplingParams
    slot: int  # row of the parameter buffers
    pslot: int | None  # row of the penalty buffers (None: no penalty and no bias)
    rng: random.Random | None  # the request's own random stream when it has a seed
    want_logprobs: bool
    suppressed: tuple[int, ...] = ()  # stop token ids masked until min_tokens were generated
    generated: int = 0  # tokens sampled so far (counted while min_tokens is pending)


class _Slots:
    """A free list of buffer rows that grows by doubling."""

    def __init__(self) -> None:
        self.capacity = 0
        self._free: list[int] = []

    def take(self) -> tuple[int, int | None]:
        """A free row, and the new capacity when the buffers must grow first."""
        if self._free:
            return self._free.pop(), None
        old, self.capacity = self.capacity, max(8, 2 * self.capacity)
        self._free = list(range(self.capacity - 1, old, -1))
        return old, self.capacity

    def give(self, slot: int) -> None:
        self._free.append(slot)


def _grown(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    out = torch.zeros((rows, *buffer.shape[1:]), dtype=buffer.dtype, device=buffer.device)
    out[: buffer.shape[0]] = buffer
    return out


def _top_p_keep(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p without sorting: keep tokens whose strictly-more-likely mass is below `top_p` ([n, 1]).

    Non-negative float32 values order like their int32 bit patterns, so the threshold pattern
    is found by radix select, 11 + 10 + 10 bits: each round histograms the probability mass of
    the tokens still in the running bucket by the next digit and keeps the largest digit at
    which the mass from the top reaches `top_p`. Three scatter-adds instead of a vocabulary sort.
    """
    bits = probs.view(torch.int32)
    mass = probs.double()
    above = torch.zeros_like(top_p)  # mass of the tokens above the running bucket
    threshold = torch.zeros_like(top_p, dtype=torch.int64)
    for shift, width in _TOP_P_DIGITS:
        digit = ((bits >> shift) & ((1 << width) - 1)).long()
        hist = torch.zeros((probs.shape[0], 1 << width), dtype=torch.float64, device=probs.device)
        hist.scatter_add_(1, digit, mass)
        at_or_above = hist.flip(-1).cumsum(-1).flip(-1) + above  # non-increasing in the digit
        chosen = ((at_or_above >= top_p).sum(-1, keepdim=True) - 1).clamp_min(0)
        above = at_or_above.gather(1, chosen) - hist.gather(1, chosen)
        mass = torch.where(digit == chosen, mass, 0.0)
        threshold |= chosen << shift
    return bits >= threshold.to(torch.int32)


class Sampler:
    """Per-request sampling state and the batched `sample` step."""

    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(seed)
        self._rows: dict[int, _Row] = {}
        self._slots, self._pslots = _Slots(), _Slots()
        # parameter buffers, one row per request: temperature (1 for greedy), top_p, min_p; top_k (0: off)
        self._fparams = torch.zeros((0, 3), dtype=torch.float32, device=self.device)
        self._top_k = torch.zeros(0, dtype=torch.int64, device=self.device)
        # penalty buffers, one row per request with penalties or a logit bias
        self._penalty = torch.zeros((0, 3), dtype=torch.float32, device=self.device)  # repetition, freq, presence
        self._counts = torch.zeros((0, vocab_size), dtype=torch.int32, device=self.device)  # output tokens
        self._seen = torch.zeros((0, vocab_size), dtype=torch.bool, device=self.device)  # prompt + output tokens
        self._bias = torch.zeros((0, vocab_size), dtype=torch.float32, device=self.device)
        # keys per optional stage, so a batch can tell which stages it needs with set operations
        self._sampled: set[int] = set()
        self._seeded: set[int] = set()
        self._penalized: set[int] = set()
        self._top_k_keys: set[int] = set()
        self._top_p_keys: set[int] = set()
        self._min_p_keys: set[int] = set()
        self._logprob_keys: set[int] = set()
        self._min_tokens_keys: set[int] = set()  # still below min_tokens, with stop ids to mask

    # ---------------------------------------------------------------- requests

    def add(
        self, key: int, params: SamplingParams, prompt_ids: Sequence[int], stop_ids: frozenset[int] = frozenset()
    ) -> None:
        """Register a request; ``stop_ids`` (its EOS and stop_token_ids) cannot be sampled before
        ``params.min_tokens`` tokens were."""
        if key in self._rows:
            raise KeyError(f"sampler: request key {key} is already registered")
        bad = [t for t in params.logit_bias if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequest(
                f"logit_bias token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})", "logit_bias"
            )
        greedy = params.greedy or params.temperature < GREEDY_TEMPERATURE
        slot, grow = self._slots.take()
        if grow is not None:
            self._fparams, self._top_k = _grown(self._fparams, grow), _grown(self._top_k, grow)
        top_k = params.top_k if params.top_k > 0 else 0
        self._fparams[slot] = self._to_device(
            [1.0 if greedy else params.temperature, params.top_p, params.min_p], torch.float32
        )
        self._top_k[slot] = top_k

        pslot = None
        if (
            params.repetition_penalty != 1.0
            or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0
            or params.logit_bias
        ):
            pslot = self._add_penalty(params, prompt_ids)
            self._penalized.add(key)

        rng = None
        if not greedy:
            self._sampled.add(key)
            if params.seed is not None:
                rng = random.Random(params.seed)
                self._seeded.add(key)
            if 0 < top_k < self.vocab_size:
                self._top_k_keys.add(key)
            if params.top_p < 1.0:
                self._top_p_keys.add(key)
            if params.min_p > 0.0:
                self._min_p_keys.add(key)
        want_logprobs = params.logprobs or params.top_logprobs > 0
        if want_logprobs:
            self._logprob_keys.add(key)
        suppressed = tuple(sorted(t for t in stop_ids if 0 <= t < self.vocab_size)) if params.min_tokens > 0 else ()
        if suppressed:
            self._min_tokens_keys.add(key)
        self._rows[key] = _Row(params, slot, pslot, rng, want_logprobs, suppressed)

    def _add_penalty(self, params: SamplingParams, prompt_ids: Sequence[int]) -> int:
        pslot, grow = self._pslots.take()
        if grow is not None:
            self._penalty, self._counts = _grown(self._penalty, grow), _grown(self._counts, grow)
            self._seen, self._bias = _grown(self._seen, grow), _grown(self._bias, grow)
        self._penalty[pslot] = torch.tensor(
            [params.repetition_penalty, params.frequency_penalty, params.presence_penalty], dtype=torch.float32
        )
        self._counts[pslot] = 0
        self._seen[pslot] = False
        if prompt_ids:
            self._seen[pslot, torch.tensor(list(prompt_ids), dtype=torch.int64, device=self.device)] = True
        self._bias[pslot] = 0.0
        if params.logit_bias:
            ids = torch.tensor(list(params.logit_bias), dtype=torch.int64, device=self.device)
            self._bias[pslot, ids] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32).to(self.device)
        return pslot

    def remove(self, key: int) -> None:
        row = self._rows.pop(key)
        self._slots.give(row.slot)
        if row.pslot is not None:
            self._pslots.give(row.pslot)
        for keys in (
            self._sampled,
            self._seeded,
            self._penalized,
            self._top_k_keys,
            self._top_p_keys,
            self._min_p_keys,
            self._logprob_keys,
            self._min_tokens_keys,
        ):
            keys.discard(key)

    def __contains__(self, key: int) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    # ---------------------------------------------------------------- one step

    def sample(self, logits: torch.Tensor, keys: Sequence[int]) -> list[SampledToken]:
        """One token per row of `logits` ([B, V], rows in `keys` order); records it for the penalties."""
        return self.launch(logits, keys).result()

    def launch(self, logits: torch.Tensor, keys: Sequence[int]) -> SampledBatch:
        """Queue the sampling of one step on the device; the tokens come back with `.result()`.

        `.ids` is the sampled ids on the device (the next step's input under overlap scheduling);
        their copy to the host starts at once (pinned memory, no wait) and `.result()` waits for it.
        """
        batch = len(keys)
        if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] != self.vocab_size:
            raise ValueError(f"sampler: logits {tuple(logits.shape)} for {batch} keys and vocab {self.vocab_size}")
        if len(set(keys)) != batch:
            raise ValueError("sampler: a request key appears twice in one batch")
        rows = [self._rows[k] for k in keys]
        if (
            self._sampled.isdisjoint(keys)
            and self._penalized.isdisjoint(keys)
            and self._min_tokens_keys.isdisjoint(keys)
            and self._logprob_keys.isdisjoint(keys)
        ):  # plain greedy batch: the argmax of the raw logits (float32 conversion is exact: same index)
            token = logits.argmax(-1)
            return SampledBatch(token, _to_host(token), rows, 0)
        x = logits.float()
        raw = x

        penalized = pslots = None
        if not self._penalized.isdisjoint(keys):
            penalized = self._positions(keys, self._penalized)
            pslots = self._to_device([r.pslot for r in rows if r.pslot is not None], torch.int64)
            x = x.index_copy(0, penalized, self._penalize(x.index_select(0, penalized), pslots))

        if not self._min_tokens_keys.isdisjoint(keys):
            x = self._suppress_stops(x, keys)

        if self._sampled.isdisjoint(keys):
            token = x.argmax(-1)
        elif self._sampled.issuperset(keys):
            token = self._draw(x, self._to_device([r.slot for r in rows], torch.int64), list(keys))
        else:
            pos = [i for i, k in enumerate(keys) if k in self._sampled]
            srow = self._to_device(pos, torch.int64)
            slots = self._to_device([rows[i].slot for i in pos], torch.int64)
            drawn = self._draw(x.index_select(0, srow), slots, [keys[i] for i in pos])
            token = x.argmax(-1).index_copy(0, srow, drawn)

        if penalized is not None and pslots is not None:
            ptoken = token.index_select(0, penalized)
            self._counts.index_put_((pslots, ptoken), torch.ones_like(ptoken, dtype=torch.int32), accumulate=True)
            self._seen.index_put_((pslots, ptoken), torch.ones_like(ptoken, dtype=torch.bool))

        if self._logprob_keys.isdisjoint(keys):
            return SampledBatch(token, _to_host(token), rows, 0)
        logprobs = torch.log_softmax(raw, dim=-1)
        chosen = logprobs.gather(1, token[:, None])
        top = max(r.params.top_logprobs for r in rows)
        columns = [token[:, None].double(), chosen.double()]
        if top > 0:
            values, ids = logprobs.topk(top, dim=-1)
            columns += [ids.double(), values.double()]
        return SampledBatch(token, _to_host(torch.cat(columns, dim=1)), rows, top)

    def _to_device(self, values: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
        """A small host list on the device without waiting for the GPU (pinned staging on CUDA)."""
        host = torch.tensor(values, dtype=dtype, pin_memory=self.device.type == "cuda")
        return host.to(self.device, non_blocking=True)

    def _suppress_stops(self, x: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
        """``x`` with each stop token of a request below its min_tokens at -inf (a new tensor: the
        raw logits stay intact for logprobs); counts this step's token for those requests."""
        rows: list[int] = []
        cols: list[int] = []
        for i, key in enumerate(keys):
            if key in self._min_tokens_keys:
                row = self._rows[key]
                rows += [i] * len(row.suppressed)
                cols += row.suppressed
                row.generated += 1
                if row.generated >= row.params.min_tokens:
                    self._min_tokens_keys.discard(key)
        index = torch.tensor([rows, cols], dtype=torch.int64).to(self.device, non_blocking=True)
        return x.index_put((index[0], index[1]), torch.tensor(float("-inf"), device=self.device))

    def _positions(self, keys: Sequence[int], members: set[int]) -> torch.Tensor:
        return self._to_device([i for i, k in enumerate(keys) if k in members], torch.int64)

    def _penalize(self, z: torch.Tensor, pslots: torch.Tensor) -> torch.Tensor:
        penalty = self._penalty.index_select(0, pslots)
        rep, freq, pres = penalty[:, 0:1], penalty[:, 1:2], penalty[:, 2:3]
        z = torch.where(self._seen.index_select(0, pslots), torch.where(z > 0, z / rep, z * rep), z)
        counts = self._counts.index_select(0, pslots).float()
        z = z - counts * freq - (counts > 0).float() * pres
        return z + self._bias.index_select(0, pslots)

    def _draw(self, y: torch.Tensor, slots: torch.Tensor, keys: list[int]) -> torch.Tensor:
        """Sample one token per row of `y` (penalised logits of sampled rows; `keys` in row order)."""
        fparams = self._fparams.index_select(0, slots)
        y = y / fparams[:, 0:1]
        if not self._top_k_keys.isdisjoint(keys):
            k = self._top_k.index_select(0, slots)
            kmax = max(self._rows[key].params.top_k for key in keys if key in self._top_k_keys)
            kth = y.topk(kmax, dim=-1).values.gather(1, (k.clamp(1, kmax) - 1)[:, None])
            kth = torch.where((k > 0)[:, None], kth, float("-inf"))
            y = y.masked_fill(y < kth, float("-inf"))
        probs = torch.softmax(y, dim=-1)
        if not self._top_p_keys.isdisjoint(keys):
            top_p = fparams[:, 1:2]
            probs = probs.masked_fill(~_top_p_keep(probs, top_p.double()) & (top_p < 1.0), 0.0)
        if not self._min_p_keys.isdisjoint(keys):  # a ratio to the top token: unchanged by renormalising
            probs = probs.masked_fill(probs < fparams[:, 2:3] * probs.max(dim=-1, keepdim=True).values, 0.0)
        # inverse CDF: the first token whose cumulative probability exceeds u * total (never a zero-probability one)
        cumulative = probs.double().cumsum(dim=-1)
        total = cumulative[:, -1:]
        target = torch.minimum(self._uniforms(keys)[:, None] * total, total.nextafter(torch.zeros_like(total)))
        return torch.searchsorted(cumulative, target, right=True).clamp_max_(self.vocab_size - 1).squeeze(1)

    def _uniforms(self, keys: list[int]) -> torch.Tensor:
        """One U[0, 1) per row: seeded requests from their own stream, the others from the engine's."""
        u = torch.rand(len(keys), dtype=torch.float64, device=self.device, generator=self._generator)
        if not self._seeded.isdisjoint(keys):
            pos = [i for i, k in enumerate(keys) if k in self._seeded]
            own = [self._rows[keys[i]].rng.random() for i in pos]  # type: ignore[union-attr]
            u.index_copy_(0, self._to_device(pos, torch.int64), self._to_device(own, torch.float64))
        return u


def _to_host(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying `t` to the host (pinned, asynchronous on CUDA); (host tensor, event to wait on)."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


class SampledBatch:
    """One step's sampled tokens: on the device at once (`ids`), on the host after `result()`."""

    def __init__(
        self,
        ids: torch.Tensor,
        host: tuple[torch.Tensor, torch.cuda.Event | None],
        rows: list[_Row],
        top: int,
    ) -> None:
        self.ids = ids
        self._host, self._done = host
        self._rows, self._top = rows, top

    def result(self) -> list[SampledToken]:
        """Wait for the copy (the one device->host transfer of the step) and unpack it."""
        if self._done is not None:
            self._done.synchronize()
        if self._host.dim() == 1:
            return [SampledToken(t, None) for t in self._host.tolist()]
        top = self._top
        out = []
        for row, line in zip(self._rows, self._host.tolist(), strict=True):
            token_id = int(line[0])
            if not row.want_logprobs:
                out.append(SampledToken(token_id, None))
                continue
            n = row.params.top_logprobs
            alternatives = tuple((int(line[2 + j]), line[2 + top + j]) for j in range(n))
            out.append(SampledToken(token_id, TokenLogprob(token_id, line[1], alternatives)))
        return out
