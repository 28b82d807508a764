"""Execute a rank's loader plan: stream slices from safetensors straight into parameters.

Each read opens its file once (handles are cached per file), takes only this rank's slice
with `safe_open(...).get_slice`, and copies it into the parameter, which is allocated
directly on the target device and dtype. Peak host memory stays near one slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .build import ParamPlan, RankPlan


def _slices(ranges: tuple[tuple[int, int], ...]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in ranges)


def materialise(
    plan: RankPlan,
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (parameter name, filled local tensor) for each parameter of the plan, in order."""
    d = Path(directory)
    with ExitStack() as stack:
        handles: dict[str, Any] = {}

        def handle(file: str) -> Any:
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(str(d / file), framework="pt", device="cpu"))
            return handles[file]

        for p in plan.params:
            yield p.name, _fill(p, handle, device, dtype, progress)


def _fill(
    p: ParamPlan,
    handle: Callable[[str], Any],
    device: torch.device | str,
    dtype: torch.dtype,
    progress: Callable[[int], None] | None,
) -> torch.Tensor:
    out = torch.zeros(p.shape, device=device, dtype=dtype)
    for r in p.reads:
        piece = handle(r.file).get_slice(r.key)[_slices(r.src)]
        if r.transpose:
            piece = piece.t()
        out[_slices(r.dst)].copy_(piece)
        if progress is not None:
            progress(piece.numel() * piece.element_size())
    if p.add is not None:
        out.add_(p.add)
    return out
