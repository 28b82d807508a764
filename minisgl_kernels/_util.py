"""Small host-side helpers for the launchers (no Triton import here)."""

from __future__ import annotations

import functools

import torch

from minisgl_kernels._dispatch import interpreting

__all__ = ["cdiv", "head_dim_block", "interpreting", "next_pow2", "sm_count"]


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def head_dim_block(head_dim: int) -> int:
    """Feature block of the attention kernels: the next power of two, at least 16 (tl.dot)."""
    return max(16, next_pow2(head_dim))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Multiprocessor count of a CUDA device (cached; no synchronisation)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
