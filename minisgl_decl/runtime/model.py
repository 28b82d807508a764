"""The executable model: catalogue modules built from the graph, run by the generated module.

Modules are built on the meta device (no memory), then each parameter is replaced by
the tensor the loader plan produced for this rank. `forward` runs the module that
`codegen` renders for the graph (the same source `compile -o` writes): a `block`
function looped over per-layer module tuples. Executing it is safe because the source
contains no spec text outside comments (see `codegen/render.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..catalogue import get_layer
from ..catalogue.context import CacheLayout, ForwardBatch, KVCache
from ..catalogue.params import TPInfo
from ..codegen.render import Rendered, render_module
from ..graph.build import STACK, ModelGraph
from ..plan.build import RankPlan
from ..plan.execute import stream

Forward = Callable[[tuple[Any, ...], list[tuple[Any, tuple[Any, ...]]], torch.Tensor, ForwardBatch], torch.Tensor]


def load_namespace(rendered: Rendered, filename: str) -> dict[str, Any]:
    """Compile and run the rendered source: its `forward` and `block` functions."""
    namespace: dict[str, Any] = {"__name__": f"minisgl_decl.generated.{filename}"}
    exec(compile(rendered.source, filename, "exec"), namespace)  # our template over checked identifiers only
    return namespace


class CompiledModel(nn.Module):
    def __init__(self, graph: ModelGraph, rank: int = 0, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.graph = graph
        self.tp = TPInfo(graph.tp, rank)
        self.mods = nn.ModuleDict()
        self._paths: dict[str, nn.Module] = {}
        self.cache_modules: list[nn.Module] = []
        self.cache_layouts: list[CacheLayout] = []  # what each cache module stores per token (its layer declares it)
        #: catalogue layers whose decode forward cannot run inside a CUDA graph
        self.not_graph_capturable = sorted({n.layer for n in graph.modules if not get_layer(n.layer).graph_capturable})
        with torch.device(device):  # parameters are meta placeholders; buffers are real
            for node in graph.modules:
                module = get_layer(node.layer).build(node.args, self.tp)
                if node.cache_index is not None:
                    module.cache_index = node.cache_index
                    self.cache_modules.append(module)
                    self.cache_layouts.append(get_layer(node.layer).cache_layout(node.args, graph.tp))
                self.mods[node.path.replace(".", "__")] = module
                self._paths[node.path] = module
        self._slots: dict[str, tuple[nn.Module, str]] = {}  # parameter name -> (owning module, attribute)
        for name, decl, node in graph.parameters:
            *inner, attr = decl.name.split(".")
            owner = self._paths[node.path]
            for part in inner:
                owner = getattr(owner, part)
            self._slots[name] = (owner, attr)
        self.rendered = render_module(graph, f"<{graph.spec_name} model>")
        self._namespace = load_namespace(self.rendered, f"<{graph.spec_name} model>")
        self._forward: Forward = self._namespace["forward"]
        self._top = tuple(self._paths[p] for p in self.rendered.top)
        blocks = [(self._namespace[fn], names) for fn, names in self.rendered.blocks]
        self._layers = [
            (blocks[k][0], tuple(self._paths[f"{STACK}.{i}.{m}"] for m in blocks[k][1]))
            for i, k in enumerate(self.rendered.which)
        ]

    def module(self, path: str) -> nn.Module:
        return self._paths[path]

    def load_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Install loaded tensors by runtime parameter name (`layers.0.attn.qkv.weight`)."""
        for name, tensor in tensors:
            owner, attr = self._slots[name]
            declared = owner._parameters[attr]
            if declared is None or declared.shape != tensor.shape:  # both come from the declaration: a bug
                raise RuntimeError(
                    f"internal error: the loader produced {tuple(tensor.shape)} for {name}, "
                    f"declared {None if declared is None else tuple(declared.shape)}"
                )
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        missing = [n for n, p in self.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"parameters not loaded: {missing[:5]}")

    def load_plan(
        self,
        plan: RankPlan,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        progress: bool | None = None,
    ) -> None:
        self.load_tensors(stream(plan, directory, device=device, dtype=dtype, progress=progress))

    def allocate_kv_cache(self, num_slots: int, dtype: torch.dtype, device: str | torch.device) -> KVCache:
        ks, vs = [], []
        for layout in self.cache_layouts:
            ks.append(torch.zeros((num_slots, *layout.k), dtype=dtype, device=device))
            vs.append(torch.zeros((num_slots, *layout.v), dtype=dtype, device=device))
        return KVCache(ks, vs)

    def kv_elements_per_token(self) -> int:
        """Numbers the KV cache holds per token on this rank, over all layers."""
        return sum(layout.elements() for layout in self.cache_layouts)

    def forward(self, tokens: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:  # type: ignore[override]
        return self._forward(self._top, self._layers, tokens, batch)
