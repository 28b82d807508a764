"""Argument checks shared by every backend, so both raise the same ValueErrors.

Only metadata (shape, dtype, device, strides) is inspected here: nothing reads
tensor data, so the checks never synchronise with the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
INDEX_DTYPES = ("int32", "int64")


_DTYPE_NAMES: dict[object, str] = {}  # these checks run on every layer of every step: names cached


def _dtype_name(t: torch.Tensor) -> str:
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        name = _DTYPE_NAMES[t.dtype] = str(t.dtype).removeprefix("torch.")
    return name


def tensor(
    name: str,
    t: object,
    *,
    ndim: int,
    dtypes: tuple[str, ...],
    device: torch.device | None = None,
    last_contiguous: bool = True,
) -> torch.Tensor:
    """Check one tensor argument and return it (typed)."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if _dtype_name(t) not in dtypes:
        raise ValueError(f"{name} must have dtype in {dtypes}, got {_dtype_name(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (same device as the query)")
    if last_contiguous and t.numel() > 0 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")
    return t


def same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {_dtype_name(t)} but {ref_name} has {_dtype_name(ref)}")


def dims(name: str, t: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Check a shape; None entries are free."""
    if t.shape == expected:  # (torch.Size is a tuple) the common case, without a generator
        return
    ok = len(expected) == t.dim() and all(e is None or e == s for e, s in zip(expected, t.shape, strict=True))
    if not ok:
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{name} must have shape {shown}, got {tuple(t.shape)}")


MAX_TRITON_HEAD_DIM = 256


def head_dim(d: int) -> None:
    """Any positive head_dim (the torch references have no other limit)."""
    if d < 1:
        raise ValueError(f"head_dim must be >= 1, got {d}")


def triton_head_dim(d: int) -> None:
    """The Triton kernels pad the feature block to a power of two, up to 256."""
    if not 1 <= d <= MAX_TRITON_HEAD_DIM:
        raise ValueError(f"the Triton backend supports head_dim 1..{MAX_TRITON_HEAD_DIM}, got {d}")


def heads(num_q_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a positive multiple of num_kv_heads ({num_kv_heads})")


def attention_options(opts: object, q: torch.Tensor) -> None:
    """The scalar options checked themselves on construction; here the type and the sinks."""
    from minisgl_kernels.options import AttentionOptions

    if not isinstance(opts, AttentionOptions):
        raise ValueError(f"opts must be a minisgl_kernels.AttentionOptions, got {type(opts).__name__}")
    if opts.sinks is not None:
        sinks = tensor("sinks", opts.sinks, ndim=1, dtypes=FLOAT_DTYPES, device=q.device)
        dims("sinks", sinks, (q.shape[1],))


def out_like(name: str, out: object, like: torch.Tensor) -> torch.Tensor:
    import torch

    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"{name} must match shape {tuple(like.shape)}, dtype {_dtype_name(like)} and device "
            f"{like.device}; got {tuple(out.shape)}, {_dtype_name(out)}, {out.device}"
        )
    if out.numel() > 0 and out.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {out.stride()}")
    return out
