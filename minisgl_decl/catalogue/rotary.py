"""Rotary position embedding: inverse frequencies for each supported rope type, and apply."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

import minisgl_kernels as kernels

from ..config.rope import RopeConfig
from ..errors import UserError


def rope_frequencies(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float, int]:
    """(inv_freq [rotary_dim/2] float32, attention scaling of cos/sin, rotary_dim)."""
    dim = int(head_dim * rope.partial_rotary_factor)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    base_freq = 1.0 / (rope.theta**exponents)
    inv_freq, scaling = FREQUENCIES[rope.type](rope, base_freq, dim)
    return inv_freq, scaling, dim


def _default(rope: RopeConfig, inv_freq: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    return inv_freq, 1.0


def _linear(rope: RopeConfig, inv_freq: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    assert rope.factor is not None
    return inv_freq / rope.factor, 1.0


def _llama3(rope: RopeConfig, inv_freq: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    assert rope.factor and rope.low_freq_factor and rope.high_freq_factor and rope.original_max_position
    factor, low, high = rope.factor, rope.low_freq_factor, rope.high_freq_factor
    old_len = rope.original_max_position
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def _yarn(rope: RopeConfig, base_freq: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    assert rope.original_max_position is not None
    orig = rope.original_max_position
    factor = rope.factor if rope.factor is not None else (rope.max_position or orig) / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        scaling = float(rope.attention_factor)
    elif rope.mscale and rope.mscale_all_dim:
        scaling = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
    else:
        scaling = mscale(factor)
    beta_fast = rope.beta_fast or 32
    beta_slow = rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(rope.theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = rope.theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, scaling


def _longrope(rope: RopeConfig, base_freq: torch.Tensor, dim: int) -> tuple[torch.Tensor, float]:
    """LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): per-frequency divisors, cos/sin scaled.

    transformers picks the factor list per forward: `long_factor` once the sequence passes
    `original_max_position`, `short_factor` before. A paged KV cache cannot re-rotate the
    keys it holds, so the choice here is static, from the config: `long_factor` when the
    model may run past its pretraining length (max_position > original_max_position, the
    128k variants), `short_factor` otherwise. The attention factor is transformers':
    sqrt(1 + ln(factor) / ln(original_max_position)) with factor = `factor` or
    max_position / original_max_position (1.0 when factor <= 1), unless given.
    """
    assert rope.short_factor is not None and rope.long_factor is not None and rope.original_max_position
    orig = rope.original_max_position
    longer = rope.max_position is not None and rope.max_position > orig
    factors = rope.long_factor if longer else rope.short_factor
    if len(factors) != dim // 2:
        raise UserError(
            f"longrope: {'long' if longer else 'short'}_factor has {len(factors)} entries; "
            f"the rotary dim {dim} needs {dim // 2}"
        )
    factor = rope.factor if rope.factor is not None else (rope.max_position or orig) / orig
    if rope.attention_factor is not None:
        scaling = float(rope.attention_factor)
    else:
        scaling = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * rope.theta**exponents), scaling


#: rope type -> (inverse frequencies, cos/sin scaling); keys match config.rope.REQUIRED_KEYS
FREQUENCIES: dict[str, Callable[[RopeConfig, torch.Tensor, int], tuple[torch.Tensor, float]]] = {
    "default": _default,
    "linear": _linear,
    "llama3": _llama3,
    "yarn": _yarn,
    "longrope": _longrope,
}


#: rows of the cached cos/sin table at most (positions past it are computed in the kernel)
MAX_TABLE_POSITIONS = 1 << 17
#: rows when the config gives no max_position
DEFAULT_TABLE_POSITIONS = 8192
_TABLES: weakref.WeakValueDictionary[tuple[object, ...], torch.Tensor] = weakref.WeakValueDictionary()


def shared_table(rope: RopeConfig, head_dim: int, inv_freq: torch.Tensor, scaling: float) -> torch.Tensor:
    """The cos/sin table of one (rope, head_dim) on inv_freq's device, built once and shared by
    every layer (and model) that uses it while any of them is alive."""
    rows = min(rope.max_position or DEFAULT_TABLE_POSITIONS, MAX_TABLE_POSITIONS)
    key = (rope, head_dim, str(inv_freq.device), rows)
    table = _TABLES.get(key)
    if table is None:
        table = kernels.rope_table(inv_freq, scaling, rows)
        _TABLES[key] = table
    return table


class Rotary(torch.nn.Module):
    """Rope in place on q and k (HF rotate-half layout, first `rotary_dim` features), from a
    cos/sin table cached once per model; Triton on CUDA, the torch reference elsewhere."""

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        super().__init__()
        inv_freq, self.scaling, self.rotary_dim = rope_frequencies(rope, head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.register_buffer("cos_sin", shared_table(rope, head_dim, self.inv_freq, self.scaling), persistent=False)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        positions: torch.Tensor,
        *,
        store: kernels.KVStore | None = None,
        norm: kernels.HeadNorm | None = None,
    ) -> None:
        """Rotate q [T, Hq, D] and k [T, Hkv, D] in place; with `store`, also store the rotated
        k and v into the KV cache; `norm` first RMS-normalises each head. One launch on CUDA."""
        opts = kernels.RopeOptions(self.scaling, norm=norm, store=store)
        kernels.apply_rope(q, k, positions, self.cos_sin, self.inv_freq, opts)
