"""Kernels of minisgl-decl: RMSNorm, attention, rotary, activation-and-multiply, routed
experts (MoE) and a few-row GEMV, in Triton with plain-torch references.

This is the one dispatch point. Each function checks its arguments (ValueError on bad
shapes, dtypes, strides or devices), then runs the Triton kernel for CUDA tensors and
the torch reference (``minisgl_kernels.reference``) otherwise. ``backend="triton"`` or
``"torch"`` (or the ``MINISGL_KERNELS_BACKEND`` environment variable) overrides the
choice; Triton on CPU tensors needs ``TRITON_INTERPRET=1``. Semantics and the KV-cache
layout are documented in ``minisgl_kernels/README.md``.

Importing this package is cheap and side-effect free: torch and triton are imported
on first call. (The package is named ``minisgl_kernels``, not ``kernels``: transformers
probes for the Hugging Face hub package ``kernels`` and must not find this one.)
"""

from minisgl_kernels._attention_api import decode_attention, decode_attention_paged, extend_attention, store_kv
from minisgl_kernels._dispatch import BACKEND_ENV, Backend
from minisgl_kernels._gemv_api import gemv
from minisgl_kernels._moe_api import act_and_mul, fused_moe
from minisgl_kernels._norm_api import add_rmsnorm, rmsnorm
from minisgl_kernels._rope_api import apply_rope, rope_table
from minisgl_kernels.options import AttentionOptions, HeadNorm, KVStore, MoEOptions, RopeOptions

__all__ = [
    "BACKEND_ENV",
    "AttentionOptions",
    "Backend",
    "HeadNorm",
    "KVStore",
    "MoEOptions",
    "RopeOptions",
    "act_and_mul",
    "add_rmsnorm",
    "apply_rope",
    "decode_attention",
    "decode_attention_paged",
    "extend_attention",
    "fused_moe",
    "gemv",
    "rmsnorm",
    "rope_table",
    "store_kv",
]
