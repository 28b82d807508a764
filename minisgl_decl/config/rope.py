"""Rotary-embedding settings normalised from HF configs (transformers 4.x and 5.x).

4.x: ``rope_theta`` at the top, optional ``rope_scaling`` {"type"|"rope_type", ...}.
5.x: ``rope_parameters`` {"rope_type", "rope_theta", ...}, possibly nested per layer type
({"full_attention": {...}, "sliding_attention": {...}}).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

#: rope type (HF `rope_type`) -> the parameters it cannot do without
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("original_max_position_embeddings",),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
}
SUPPORTED_ROPE_TYPES = tuple(REQUIRED_KEYS)


@dataclass(frozen=True)
class RopeConfig:
    type: str
    theta: float
    partial_rotary_factor: float = 1.0
    factor: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position: int | None = None
    max_position: int | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] | None = None  # longrope: per-frequency divisors up to original_max_position
    long_factor: tuple[float, ...] | None = None  # longrope: per-frequency divisors beyond it


def normalise_rope(
    params: Mapping[str, Any] | None,
    *,
    theta: float,
    layer_type: str | None,
    partial_rotary_factor: float | None,
    max_position: int | None,
    original_max_position: int | None,
) -> RopeConfig:
    """Turn HF rope settings into a `RopeConfig`; unsupported types and values the frequencies cannot
    be computed from are an error (`UserError` naming the HF key), never ignored."""
    p: Mapping[str, Any] = dict(params or {})
    if layer_type is not None and isinstance(p.get(layer_type), Mapping):
        p = p[layer_type]
    elif p and all(isinstance(v, Mapping) for v in p.values()):
        raise UserError(
            "rope parameters are nested per layer type ({', '.join(p)}); "
            "set `layer_type:` in the spec's rope entry to pick one"
        )
    rope_type = str(p.get("rope_type") or p.get("type") or "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UserError(f"rope type `{rope_type}` is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    theta = float(p.get("rope_theta") or theta)
    prf = p.get("partial_rotary_factor", partial_rotary_factor)
    orig = p.get("original_max_position_embeddings") or original_max_position or max_position
    factor = _positive(p, "factor", rope_type)
    low, high = _positive(p, "low_freq_factor", rope_type), _positive(p, "high_freq_factor", rope_type)
    if low is not None and low == high:
        raise UserError(
            f"rope type `{rope_type}`: `low_freq_factor` and `high_freq_factor` are both {low:g}, but the "
            "frequencies between them are interpolated over their difference; `high_freq_factor` must be "
            "larger (Llama 3.1 uses 1.0 and 4.0): fix the checkpoint's config.json (rope_parameters or rope_scaling)"
        )
    present = {
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": orig,
        "short_factor": p.get("short_factor"),
        "long_factor": p.get("long_factor"),
    }
    for key in REQUIRED_KEYS[rope_type]:
        if present[key] is None:
            raise UserError(f"rope type `{rope_type}` needs `{key}`")
    return RopeConfig(
        type=rope_type,
        theta=theta,
        partial_rotary_factor=float(prf) if prf is not None else 1.0,
        factor=factor,
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position=int(orig) if orig is not None else None,
        max_position=max_position,
        beta_fast=p.get("beta_fast"),
        beta_slow=p.get("beta_slow"),
        mscale=p.get("mscale"),
        mscale_all_dim=p.get("mscale_all_dim"),
        attention_factor=p.get("attention_factor"),
        truncate=bool(p.get("truncate", True)),
        short_factor=_factors(p.get("short_factor"), "short_factor"),
        long_factor=_factors(p.get("long_factor"), "long_factor"),
    )


def _positive(p: Mapping[str, Any], key: str, rope_type: str) -> float | None:
    """The rope number `key` (absent: None); anything but a finite positive number is an error naming it."""
    value = p.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UserError(
            f"rope type `{rope_type}`: `{key}` = {value!r}, but it must be a positive number (it divides "
            "the frequencies): fix it in the checkpoint's config.json (rope_parameters or rope_scaling)"
        )
    return float(value)


def _factors(value: Any, key: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise UserError(f"rope `{key}` must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)
