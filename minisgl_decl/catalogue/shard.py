"""A layer's declared parameters on one rank, and their allocation into its module.

The declarations (`LayerKind.params`) are the only place a parameter's name, full shape
and TP role are written. `allocate` puts each one into the built module at its declared
(dotted) name with the local shape the declaration gives for (tp, rank), on the meta
device: the loader plan, derived from the same declarations, fills it later. A module
reads any local size it needs (split points, its first vocab row) from `Shard`, never
recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .params import ParamDecl, TPInfo


@dataclass(frozen=True)
class Shard:
    """The declarations of one layer instance and this process's place in the TP group."""

    decls: tuple[ParamDecl, ...]
    tp: TPInfo

    def decl(self, name: str) -> ParamDecl:
        for d in self.decls:
            if d.name == name:
                return d
        raise KeyError(f"no parameter `{name}` declared; declared: {', '.join(d.name for d in self.decls)}")

    def split(self, name: str) -> tuple[int, ...]:
        """Local size of each segment of `name` along its sharded dim (q | k | v, gate | up)."""
        return self.decl(name).local_split(self.tp.size)

    def start(self, name: str) -> int:
        """First index of the full tensor this rank holds along `name`'s sharded dim."""
        return self.decl(name).rank_pieces(self.tp.size, self.tp.rank)[0][0]


def allocate(module: nn.Module, shard: Shard) -> None:
    """Register every declared parameter of `module` at its declared name.

    A present parameter becomes an uninitialised meta tensor of its local shape; an
    absent one (switched off by the layer's arguments) is registered as ``None``.
    Containers on the way (``gate_up`` of ``gate_up.weight``) are the module's own
    submodules when it has them, plain ``nn.Module`` otherwise.
    """
    for decl in shard.decls:
        *path, attr = decl.name.split(".")
        owner = module
        for part in path:
            child = getattr(owner, part, None)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            if not isinstance(child, nn.Module):
                raise TypeError(f"{type(module).__name__}.{part} is not a module; cannot hold `{decl.name}`")
            owner = child
        param = None
        if decl.present:
            param = nn.Parameter(torch.empty(decl.local_shape(shard.tp.size), device="meta"), requires_grad=False)
        owner.register_parameter(attr, param)
