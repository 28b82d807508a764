"""Triton activation functions and the fused ``act(gate) * up`` kernel.

``act_mul`` rounds like the torch expression ``act(gate) * up`` on tensors of the model
dtype: the activation is computed in float32 and rounded to the dtype, then multiplied by
``up`` and rounded again (torch's bf16/fp16 elementwise ops compute in float32 and round
each result). Launcher: act_launch.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: activation names the kernels accept (the ``ACT`` constexpr)
KERNEL_ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


@triton.jit
def activate(x, ACT: tl.constexpr):
    """``act(x)`` in float32 for x float32."""
    if ACT == "silu":
        return x / (1.0 + tl.exp(-x))
    elif ACT == "gelu":  # erf form (torch F.gelu default)
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == "gelu_tanh":
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * inner) + 1.0)
        return 0.5 * x * (1.0 + tanh)
    else:  # relu
        return tl.maximum(x, 0.0)


@triton.jit
def act_mul(gate, up, OUT_DTYPE: tl.constexpr, ACT: tl.constexpr):
    """``act(gate) * up`` with torch's roundings (gate and up already in OUT_DTYPE)."""
    a = activate(gate.to(tl.float32), ACT).to(OUT_DTYPE).to(tl.float32)
    return (a * up.to(tl.float32)).to(OUT_DTYPE)


@triton.jit
def act_and_mul_kernel(
    X,
    Y,
    stride_xt,
    stride_yt,
    ffn,
    ACT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Row t: ``Y[t, :ffn] = act(X[t, :ffn]) * X[t, ffn:2*ffn]``; grid (rows, cdiv(ffn, BLOCK))."""
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ffn
    gate = tl.load(X + t * stride_xt + offs, mask=mask, other=0.0)
    up = tl.load(X + t * stride_xt + ffn + offs, mask=mask, other=0.0)
    tl.store(Y + t * stride_yt + offs, act_mul(gate, up, Y.dtype.element_ty, ACT), mask=mask)
