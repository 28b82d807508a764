"""The options of each kernel family, one frozen dataclass each, passed unchanged from the
public entry point through the Triton launcher and the torch reference.

Scalar options are checked on construction (ValueError); tensor fields are checked by the
entry point that receives them (their shapes depend on the call's other tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _positive(name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        allowed = "None or a finite positive number" if optional else "a finite positive number"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, eq=False)
class AttentionOptions:
    """Causal attention of one layer.

    ``scale``: the softmax scale of ``q.k``. ``window``: sliding window (HF semantics: a query
    at position p sees keys at positions j with ``p - window < j <= p``). ``softcap``:
    ``s = softcap * tanh(s / softcap)`` on the scaled scores, before masking. ``sinks``: one
    learned logit per query head ([Hq] float tensor) that joins each row's softmax
    denominator (compared with the final scores) and contributes no value, so a query can
    attend "nowhere"; the output is ``sum_j v_j exp(s_j) / (exp(sink) + sum_j exp(s_j))``.
    """

    scale: float
    window: int | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _positive("scale", self.scale, optional=False)
        w = self.window
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
            raise ValueError(f"window must be None or an int >= 1, got {w!r}")
        _positive("softcap", self.softcap, optional=True)


@dataclass(frozen=True, eq=False)
class KVStore:
    """Where a fused kernel also stores the new tokens' k and v: ``k_cache[slots[t]] = k[t]``
    (and v); a negative slot skips token t."""

    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor


@dataclass(frozen=True, eq=False)
class HeadNorm:
    """A per-head RMSNorm of q and k (``[head_dim]`` weights, one shared by all heads), as
    :func:`minisgl_kernels.rmsnorm` with ``eps``, ``offset`` and ``cast_before_weight``."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float = 1e-6
    offset: float = 0.0
    cast_before_weight: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"norm eps must be a non-negative number, got {self.eps!r}")


@dataclass(frozen=True, eq=False)
class RopeOptions:
    """Rotary embedding of one layer: ``scaling`` of cos/sin (folded into the table, used for
    positions past it); optionally a per-head ``norm`` of q and k first, and a ``store`` of
    the rotated k (and v) into the KV cache in the same launch."""

    scaling: float = 1.0
    norm: HeadNorm | None = None
    store: KVStore | None = None


@dataclass(frozen=True, eq=False)
class MoEOptions:
    """Variations of the routed experts' MLP: ``gate_up_bias`` [E, 2F] (gate | up, like
    ``gate_up``) added to the projection, then ``act(g) * (u + up_offset)`` where, with a
    ``limit``, g is clamped to ``<= limit`` and u to ``[-limit, limit]``, and ``alpha`` is
    silu's sigmoid slope (``g * sigmoid(alpha * g)``). The defaults are the plain gated MLP.
    """

    gate_up_bias: torch.Tensor | None = None
    alpha: float = 1.0
    limit: float | None = None
    up_offset: float = 0.0

    def __post_init__(self) -> None:
        _positive("alpha", self.alpha, optional=False)
        _positive("limit", self.limit, optional=True)
        if not (isinstance(self.up_offset, (int, float)) and math.isfinite(self.up_offset)):
            raise ValueError(f"up_offset must be a finite number, got {self.up_offset!r}")

    @property
    def plain(self) -> bool:
        """The plain gated MLP (what the Triton kernel computes)."""
        return self.gate_up_bias is None and self.alpha == 1.0 and self.limit is None and self.up_offset == 0.0
