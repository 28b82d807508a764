"""The loader plan as data: per rank, per runtime parameter, the reads that fill it.

A `Read` copies one rectangular slice of one checkpoint tensor (in its stored
orientation) into one rectangular region of the rank-local parameter. Everything the
executor needs is in the plan (file, byte offset, stored shape and dtype), so executing
it reads no header again and the JSON form (`docs/loader-plan.md`) is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .checkpoint import DTYPE_BYTES

Range = tuple[int, int]
PLAN_FORMAT = "minisgl-decl.load-plan/1"


def _volume(ranges: tuple[Range, ...]) -> int:
    n = 1
    for a, b in ranges:
        n *= b - a
    return n


@dataclass(frozen=True)
class Read:
    """Copy `tensor[src]` (transposed first if `transpose`) into `local[dst]`; ranges are [start, stop)."""

    key: str
    file: str
    offset: int  # byte offset of the tensor's data in `file`
    shape: tuple[int, ...]  # stored shape of the checkpoint tensor
    dtype: str  # stored dtype (safetensors name)
    src: tuple[Range, ...]
    dst: tuple[Range, ...]
    transpose: bool = False

    @property
    def numel(self) -> int:
        return _volume(self.src)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]

    @property
    def whole(self) -> bool:
        return all(r == (0, n) for r, n in zip(self.src, self.shape, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "file": self.file,
            "offset": self.offset,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "src": [list(r) for r in self.src],
            "dst": [list(r) for r in self.dst],
            "transpose": self.transpose,
        }


@dataclass(frozen=True)
class ParamPlan:
    name: str
    shape: tuple[int, ...]  # local shape on this rank
    full_shape: tuple[int, ...]
    role: str  # column, row, qkv, merged_column, vocab, replicated
    reads: tuple[Read, ...]
    add: float | None
    rule: str  # file:line of the weight rule
    concat_dim: int = 0

    @property
    def padded(self) -> bool:
        """True when the reads leave part of the local tensor uncovered (zero padding, vocab)."""
        n = 1
        for d in self.shape:
            n *= d
        return sum(_volume(r.dst) for r in self.reads) < n

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.reads)

    def ops(self, dtype: str) -> list[dict[str, Any]]:
        """What happens to the sources, in order: rename/slice/concat, split, transpose, add, pad, cast."""
        keys = list(dict.fromkeys(r.key for r in self.reads))
        ops: list[dict[str, Any]] = []
        if len(keys) > 1:
            ops.append({"op": "concat", "dim": self.concat_dim, "parts": keys})
        elif self.shape != self.full_shape or not all(r.whole for r in self.reads):
            ops.append({"op": "slice", "from": keys[0]})
        else:
            ops.append({"op": "rename", "from": keys[0]})
        if len(self.reads) > len(keys):
            ops.append({"op": "split", "pieces": len(self.reads)})
        if any(r.transpose for r in self.reads):
            ops.append({"op": "transpose"})
        if self.add is not None:
            ops.append({"op": "add", "value": self.add})
        if self.padded:
            ops.append({"op": "pad", "value": 0})
        casts = sorted({r.dtype for r in self.reads if r.dtype != dtype})
        ops += [{"op": "cast", "from": c, "to": dtype} for c in casts]
        return ops

    def to_json(self, dtype: str) -> dict[str, Any]:
        return {
            "param": self.name,
            "shape": list(self.shape),
            "full_shape": list(self.full_shape),
            "role": self.role,
            "rule": self.rule,
            "ops": self.ops(dtype),
            "add": self.add,
            "reads": [r.to_json() for r in self.reads],
        }


@dataclass(frozen=True)
class RankPlan:
    rank: int
    params: tuple[ParamPlan, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.params)


@dataclass(frozen=True)
class LoadPlan:
    tp: int
    checkpoint: str
    ranks: tuple[RankPlan, ...]
    warnings: tuple[str, ...] = field(default=())
    dtype: str = "F32"  # the dtype parameters are loaded as (safetensors name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "tp": self.tp,
            "checkpoint": self.checkpoint,
            "dtype": self.dtype,
            "warnings": list(self.warnings),
            "ranks": [
                {"rank": r.rank, "bytes": r.nbytes, "params": [p.to_json(self.dtype) for p in r.params]}
                for r in self.ranks
            ],
        }
