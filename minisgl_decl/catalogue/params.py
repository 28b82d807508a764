"""What a catalogue layer declares about each of its parameters: full shape and TP role.

One declaration drives both module construction (local shapes on a rank) and the loader
plan (which rows/columns of the full tensor a rank reads). A sharded parameter is cut
along one dimension into *segments* laid end to end (q | k | v, or gate | up); each
segment is a number of equal *units* (heads, rows) and a mode:

- ``split``: units are divided evenly between ranks (tp must divide the unit count);
- ``replicate``: like split when units >= tp, otherwise each unit is copied to tp/units
  consecutive ranks (GQA key/value heads when tp > num_kv_heads);
- ``pad``: split into ceil(units/tp) per rank, the tail past ``units`` padded with zeros
  (vocab-parallel embedding and LM head).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..errors import UserError

Mode = Literal["split", "replicate", "pad"]


@dataclass(frozen=True)
class Segment:
    name: str
    units: int
    unit_size: int
    mode: Mode = "split"

    @property
    def size(self) -> int:
        return self.units * self.unit_size

    def check(self, tp: int, owner: str) -> None:
        if self.mode == "pad":
            return
        if self.mode == "replicate" and self.units < tp:
            if tp % self.units:
                raise UserError(
                    f"{owner}: tp={tp} is not a multiple of {self.name} ({self.units}); with fewer "
                    f"{self.name} than ranks each must be copied to a whole number of ranks"
                )
            return
        if self.units % tp:
            raise UserError(f"{owner}: tp={tp} does not divide {self.name} ({self.units})")

    def local_units(self, tp: int) -> int:
        if self.mode == "pad":
            return -(-self.units // tp)
        if self.mode == "replicate" and self.units < tp:
            return 1
        return self.units // tp

    def rank_range(self, tp: int, rank: int) -> tuple[int, int]:
        """[start, stop) in units of this segment read by `rank` (stop may pass `units` for pad)."""
        n = self.local_units(tp)
        if self.mode == "replicate" and self.units < tp:
            unit = rank // (tp // self.units)
            return unit, unit + 1
        return rank * n, rank * n + n


@dataclass(frozen=True)
class Sharded:
    """Cut along `dim` into `segments` (their sizes add up to the full size of `dim`)."""

    dim: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor."""


Role = Sharded | Replicated


@dataclass(frozen=True)
class ParamDecl:
    """One parameter of a layer: its name inside the layer, full shape and TP role.

    A layer declares every parameter it can have; one that its arguments switch off
    (a bias with ``bias: false``) is declared with ``present`` False, so the names a
    layer can have never depend on argument values (validation checks weight rules
    against them) and the built module holds ``None`` at that name.
    """

    name: str
    shape: tuple[int, ...]
    role: Role
    role_name: str  # column, row, qkv, merged_column, vocab, replicated
    present: bool = True

    def when(self, present: bool) -> ParamDecl:
        """This declaration, present only if `present` (an optional parameter)."""
        return replace(self, present=present)

    def per_expert(self) -> ParamDecl:
        """One expert's slice of an expert-stacked parameter (leading dim dropped)."""
        role: Role = self.role
        if isinstance(role, Sharded):
            role = Sharded(role.dim - 1, role.segments)
        return ParamDecl(f"{self.name}[e]", self.shape[1:], role, self.role_name, self.present)

    def check_tp(self, tp: int, owner: str) -> None:
        if isinstance(self.role, Sharded):
            for seg in self.role.segments:
                seg.check(tp, f"{owner}.{self.name}")

    def local_shape(self, tp: int) -> tuple[int, ...]:
        if isinstance(self.role, Replicated):
            return self.shape
        shape = list(self.shape)
        shape[self.role.dim] = sum(s.local_units(tp) * s.unit_size for s in self.role.segments)
        return tuple(shape)

    def local_split(self, tp: int) -> tuple[int, ...]:
        """Local size of each segment along the sharded dim (q | k | v, gate | up); the whole dim if replicated."""
        if isinstance(self.role, Replicated):
            return (self.shape[0],) if self.shape else ()
        return tuple(s.local_units(tp) * s.unit_size for s in self.role.segments)

    def rank_pieces(self, tp: int, rank: int) -> list[tuple[int, int]]:
        """The [start, stop) ranges of the full tensor along the sharded dim, in local order.

        A stop past the full size means zero padding (vocab-parallel layers).
        """
        if isinstance(self.role, Replicated):
            return [(0, self.shape[0] if self.shape else 1)]
        pieces: list[tuple[int, int]] = []
        base = 0
        for seg in self.role.segments:
            lo, hi = seg.rank_range(tp, rank)
            pieces.append((base + lo * seg.unit_size, base + hi * seg.unit_size))
            base += seg.size
        return pieces


def column(name: str, shape: tuple[int, ...], units: int, unit_size: int) -> ParamDecl:
    return ParamDecl(name, shape, Sharded(0, (Segment("rows", units, unit_size),)), "column")


def row(name: str, shape: tuple[int, ...], units: int, unit_size: int) -> ParamDecl:
    return ParamDecl(name, shape, Sharded(1, (Segment("columns", units, unit_size),)), "row")


def merged_column(name: str, shape: tuple[int, ...], segments: tuple[Segment, ...], role_name: str) -> ParamDecl:
    return ParamDecl(name, shape, Sharded(0, segments), role_name)


def vocab(name: str, shape: tuple[int, ...], size: int) -> ParamDecl:
    return ParamDecl(name, shape, Sharded(0, (Segment("vocab", size, 1, "pad"),)), "vocab")


def expert_stacked(name: str, shape: tuple[int, ...], dim: int, segments: tuple[Segment, ...]) -> ParamDecl:
    """[experts, ...]: every rank holds every expert, each sharded along `dim` (>= 1) like a dense layer."""
    return ParamDecl(name, shape, Sharded(dim, segments), "expert_stacked")


def replicated(name: str, shape: tuple[int, ...]) -> ParamDecl:
    return ParamDecl(name, shape, Replicated(), "replicated")


@dataclass(frozen=True)
class TPInfo:
    """This process's place in the tensor-parallel group."""

    size: int = 1
    rank: int = 0
