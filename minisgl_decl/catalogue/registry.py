"""Registry of catalogue layers, imported lazily; unknown names list what exists."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from .context import CacheLayout
from .params import ParamDecl, TPInfo
from .shard import Shard, allocate


class LayerArgs(BaseModel):
    """Base of every layer's argument model (resolved values, not expressions)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class LayerKind(ABC):
    """One catalogue entry."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Args: ClassVar[type[LayerArgs]]
    #: an RMS-style norm that the compiler may fuse with a preceding residual add
    fuses_residual_add: ClassVar[bool] = False
    #: reads/writes the KV cache (gets a cache index at build time)
    uses_kv_cache: ClassVar[bool] = False
    #: its decode forward can be captured in a CUDA graph (no host synchronisation)
    graph_capturable: ClassVar[bool] = True

    @abstractmethod
    def params(self, args: Any) -> list[ParamDecl]:
        """Every parameter the layer can have, with full shapes and TP roles for these arguments.

        The same names for any arguments: one the arguments switch off is declared
        with ``.when(False)``.
        """

    def cache_layout(self, args: Any, tp: int) -> CacheLayout:
        """Per-token KV-cache shapes of one rank (layers with `uses_kv_cache` override this)."""
        raise TypeError(f"catalogue layer `{self.name}` owns no KV cache")

    @abstractmethod
    def module(self, args: Any, shard: Shard) -> nn.Module:
        """The module without its parameters (`build` allocates them from the declarations)."""

    def build(self, args: Any, tp: TPInfo) -> nn.Module:
        """A module holding this rank's shard of every declared parameter (meta, uninitialised)."""
        shard = Shard(tuple(self.params(args)), tp)
        module = self.module(args, shard)
        allocate(module, shard)
        return module


_ENTRIES: dict[str, str] = {
    "embedding": "embedding:Embedding",
    "lm_head": "embedding:LMHead",
    "rmsnorm": "norms:RMSNormLayer",
    "layernorm": "norms:LayerNormLayer",
    "attention": "attention:Attention",
    "gated_mlp": "mlp:GatedMLP",
    "mlp": "mlp:MLP",
    "linear": "linear:Linear",
    "softcap": "elementwise:SoftCap",
    "activation": "elementwise:Activation",
    "position_embedding": "positions:PositionEmbedding",
    "moe": "moe:MoE",
    "latent_attention": "latent_attention:LatentAttention",
}
_CACHE: dict[str, LayerKind] = {}


class UnknownLayer(KeyError):
    pass


def catalogue_names() -> list[str]:
    return sorted(_ENTRIES)


def get_layer(name: str) -> LayerKind:
    if name not in _ENTRIES:
        raise UnknownLayer(name)
    if name not in _CACHE:
        module_name, cls_name = _ENTRIES[name].split(":")
        module = importlib.import_module(f"{__package__}.{module_name}")
        _CACHE[name] = getattr(module, cls_name)()
    return _CACHE[name]
