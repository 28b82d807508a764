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
    if choice in ("triton", "torch"):
        return choice == "triton"
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {choice!r}")
