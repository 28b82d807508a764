"""What a layer sees at run time: the batch metadata, KV cache views and communicator.

Passed explicitly to every forward (no globals), so two engines can live in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class Comm(Protocol):
    """Collectives a tensor-parallel layer needs."""

    size: int
    rank: int

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor: ...

    def all_gather_last_dim(self, t: torch.Tensor) -> torch.Tensor: ...


class SingleRank:
    """The communicator of a one-process run: collectives are identities."""

    size = 1
    rank = 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_gather_last_dim(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass(frozen=True)
class CacheLayout:
    """What one cache-owning layer stores per token (KV slot) on one rank: the per-slot shapes of
    its `k` and `v` cache tensors. Attention: both `(kv_heads_local, head_dim)`; latent attention:
    `k` is `(latent + rope,)` and `v` is `(0,)` (its values are a prefix of the cached vector)."""

    k: tuple[int, ...]
    v: tuple[int, ...]

    def elements(self) -> int:
        """Numbers stored per token (both tensors)."""
        n_k = n_v = 1
        for d in self.k:
            n_k *= d
        for d in self.v:
            n_v *= d
        return n_k + n_v


@dataclass
class KVCache:
    """Paged KV cache, page size 1: `k[layer]` is [num_slots, *layout.k] (attention:
    [num_slots, kv_heads_local, head_dim]), `v[layer]` likewise; see `CacheLayout`."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class ForwardBatch:
    """Metadata for one forward over a batch of requests (all tokens concatenated).

    Prefill/extend (``is_decode`` False): request b owns new tokens
    ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``; its cached prefix slots are
    ``prefix_slots[prefix_indptr[b]:prefix_indptr[b+1]]``.
    Decode: one token per request; its whole context (including the new token) is
    ``kv_slots[kv_indptr[b]:kv_indptr[b+1]]``.
    """

    positions: torch.Tensor
    out_slots: torch.Tensor
    cu_seqlens_q: torch.Tensor
    is_decode: bool
    kv: KVCache
    prefix_indptr: torch.Tensor | None = None
    prefix_slots: torch.Tensor | None = None
    kv_indptr: torch.Tensor | None = None
    kv_slots: torch.Tensor | None = None
    logits_indices: torch.Tensor | None = None
    max_seqlen_q: int | None = None  # longest new-token run (saves the extend kernel a host sync)
    comm: Comm = field(default_factory=SingleRank)
    # the page-table view of the same contexts (set by the engine's runner; optional for kernels):
    # request b's slots are req_to_token[req_rows[b], :seq_lens[b]] (seq_lens include the new tokens)
    req_rows: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    req_to_token: torch.Tensor | None = None
