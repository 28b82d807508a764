"""Execute a rank's loader plan: stream its slices from the safetensors files into parameters.

The plan already holds each tensor's file, byte offset, stored shape and dtype (from the
headers), so the executor only does positioned reads (`os.preadv`) of the bytes a rank
needs: no memory map, no pickle, no second header parse. Each parameter is allocated
once, directly on the target device and dtype:

- a slice that is contiguous both in the file and in the destination (whole tensors,
  row ranges: column-parallel, qkv/gate_up parts, vocab rows) with no cast, on CPU, is
  read straight into the parameter's memory (one copy, from the page cache);
- anything else (cast, transpose, column ranges of row-parallel weights, another device)
  goes through a reused staging buffer of at most `CHUNK_BYTES`, a block of whole rows
  at a time, then `copy_` converts and places it.

So host memory beyond the parameters themselves stays at one staging chunk. Parameters
are visited file by file, in file order, so a cold read is sequential.

Each filled floating-point parameter is checked for NaN/Inf (one pass over a tensor that
was just written); non-finite weights are reported as a warning naming the parameters.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .model import ParamPlan, RankPlan, Read

CHUNK_BYTES = 16 * 1024 * 1024
log = logging.getLogger("minisgl_decl.load")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def _slices(ranges: tuple[tuple[int, int], ...]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in ranges)


def _bytes_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, writable."""
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class _Files:
    """Open file descriptors of one checkpoint directory, and one reused staging buffer."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fds: dict[str, int] = {}
        self.staging = torch.empty(0, dtype=torch.uint8)

    def fd(self, file: str) -> int:
        if file not in self.fds:
            self.fds[file] = os.open(self.directory / file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self.fds[file]

    def read_into(self, file: str, offset: int, buf: memoryview) -> None:
        """Fill `buf` from `file` at `offset`, in pieces of at most CHUNK_BYTES (faster than one huge read)."""
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd(file), [buf[done : done + CHUNK_BYTES]], offset + done)
            if n <= 0:
                raise OSError(f"{self.directory / file}: unexpected end of file at byte {offset + done}")
            done += n

    def stage(self, nbytes: int) -> torch.Tensor:
        if self.staging.numel() < nbytes:
            self.staging = torch.empty(nbytes, dtype=torch.uint8)
        return self.staging[:nbytes]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _row_bytes(r: Read) -> int:
    n = torch.empty((), dtype=TORCH_DTYPES[r.dtype]).element_size()
    for d in r.shape[1:]:
        n *= d
    return n


def _copy(files: _Files, r: Read, out: torch.Tensor, add: float | None) -> int:
    """Fill `out[r.dst]` from the checkpoint; returns the bytes read from the file.

    `dst` may have more dims than the source (an expert-stacked parameter): the extra
    leading ranges have length 1 and are indexed away, leaving a view of the source's rank.
    """
    lead = len(r.dst) - len(r.src)
    dst = out[tuple(a for a, _ in r.dst[:lead]) + _slices(r.dst[lead:])]
    src_dtype = TORCH_DTYPES[r.dtype]
    if not r.shape:  # scalar
        buf = files.stage(_row_bytes(r)).view(src_dtype).reshape(())
        files.read_into(r.file, r.offset, _bytes_view(buf))
        dst.copy_(buf)
        return buf.element_size()
    row = _row_bytes(r)
    (a, b), rest = r.src[0], r.src[1:]
    full_rows = all(x == (0, n) for x, n in zip(rest, r.shape[1:], strict=True))
    direct = (
        full_rows
        and not r.transpose
        and src_dtype == out.dtype
        and out.device.type == "cpu"
        and dst.is_contiguous()
        and add is None
    )
    if direct:
        files.read_into(r.file, r.offset + a * row, _bytes_view(dst))
        return (b - a) * row
    step = max(1, CHUNK_BYTES // max(row, 1))
    for lo in range(a, b, step):
        hi = min(b, lo + step)
        buf = files.stage((hi - lo) * row)
        files.read_into(r.file, r.offset + lo * row, _bytes_view(buf))
        block = buf.view(src_dtype).reshape(hi - lo, *r.shape[1:])[(slice(None), *_slices(rest))]
        if r.transpose:  # stored rows are the destination's columns
            part = dst[:, lo - a : hi - a]
            block = block.t()
        else:
            part = dst[lo - a : hi - a]
        part.copy_(block)
        if add is not None:
            part.add_(add)
    return (b - a) * row


def _file_order(plan: RankPlan) -> list[ParamPlan]:
    """Parameters grouped by the file (then offset) of their first read."""

    def key(p: ParamPlan) -> tuple[str, int]:
        return (p.reads[0].file, p.reads[0].offset) if p.reads else ("", 0)

    return sorted(plan.params, key=key)


def materialise(
    plan: RankPlan,
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (parameter name, filled local tensor on `device`/`dtype`) for every parameter of the plan."""
    files = _Files(Path(directory))
    nonfinite: list[str] = []
    try:
        for p in _file_order(plan):
            alloc = torch.zeros if p.padded else torch.empty
            out = alloc(p.shape, device=device, dtype=dtype)
            for r in p.reads:
                n = _copy(files, r, out, p.add)
                if progress is not None:
                    progress(n)
            if out.is_floating_point() and not _all_finite(out):
                nonfinite.append(p.name)
            yield p.name, out
    finally:
        files.close()
    if nonfinite:
        warn_nonfinite(nonfinite, plan.rank)


def _all_finite(t: torch.Tensor) -> bool:
    """NaN/Inf check in blocks of 1M elements (isfinite makes a ~4 MiB float temporary per block)."""
    flat = t.reshape(-1)
    return all(bool(torch.isfinite(block).all()) for block in flat.split(1 << 20))


def warn_nonfinite(names: list[str], rank: int) -> None:
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    log.warning(
        "warning: rank %d: %d parameter(s) hold NaN or Inf after loading: %s; the checkpoint is "
        "probably corrupt, and outputs will be NaN",
        rank,
        len(names),
        shown,
    )


def stream(
    plan: RankPlan,
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """`materialise` with a tqdm progress bar in bytes (and bytes/s) on stderr.

    `progress=None` shows it only when stderr is a terminal; False never; True always.
    """
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(
        total=plan.nbytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not show,
        desc=f"loading rank {plan.rank}",
        leave=False,
        dynamic_ncols=True,
    ) as bar:
        yield from materialise(plan, directory, device=device, dtype=dtype, progress=bar.update)
