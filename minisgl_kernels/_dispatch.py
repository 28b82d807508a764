"""Backend choice: Triton for CUDA tensors, the torch reference otherwise."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "triton", "torch"]
BACKEND_ENV = "MINISGL_KERNELS_BACKEND"


def use_triton(t: torch.Tensor, backend: Backend | None) -> bool:
    """Resolve ``backend`` (or $MINISGL_KERNELS_BACKEND, default "auto") for tensor ``t``."""
    choice = backend if backend is not None else os.environ.get(BACKEND_ENV, "auto")
    if choice == "auto":
        return t.device.type == "cuda"
    if choice not in ("triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {choice!r}")
    if choice == "triton" and t.device.type != "cuda" and not interpreting():
        # checked before any launcher module (and so triton) is imported
        raise ValueError(
            f"the Triton backend needs CUDA tensors (got {t.device}); on CPU use backend='torch' "
            "or set TRITON_INTERPRET=1 before triton is imported"
        )
    return choice == "triton"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
