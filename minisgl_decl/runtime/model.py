"""The executable model: catalogue modules built from the graph, run by a program interpreter.

Modules are built on the meta device (no memory), then each parameter is replaced by
the tensor the loader plan produced for this rank. `forward` walks the graph's flat SSA
program and frees every intermediate after its last use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..catalogue import get_layer
from ..catalogue.context import ForwardBatch, KVCache
from ..catalogue.params import TPInfo
from ..graph.build import FORWARD_INPUT, FORWARD_OUTPUT, ModelGraph
from ..graph.program import last_uses
from ..plan.build import RankPlan
from ..plan.execute import stream


class CompiledModel(nn.Module):
    def __init__(self, graph: ModelGraph, rank: int = 0, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.graph = graph
        self.tp = TPInfo(graph.tp, rank)
        self.mods = nn.ModuleDict()
        self._paths: dict[str, nn.Module] = {}
        self.cache_modules: list[nn.Module] = []
        with torch.device(device):  # parameters are meta placeholders; buffers are real
            for node in graph.modules:
                module = get_layer(node.layer).build(node.args, self.tp)
                if node.cache_index is not None:
                    module.cache_index = node.cache_index
                    self.cache_modules.append(module)
                self.mods[node.path.replace(".", "__")] = module
                self._paths[node.path] = module
        self._slots: dict[str, tuple[nn.Module, str]] = {}  # parameter name -> (owning module, attribute)
        for name, decl, node in graph.parameters:
            *inner, attr = decl.name.split(".")
            owner = self._paths[node.path]
            for part in inner:
                owner = getattr(owner, part)
            self._slots[name] = (owner, attr)
        self.program = graph.program
        self.frees = last_uses(list(graph.program))
        self._forward_fn: Callable[[dict[str, nn.Module], torch.Tensor, ForwardBatch], torch.Tensor] | None = None

    def use_forward(
        self, fn: Callable[[dict[str, nn.Module], torch.Tensor, ForwardBatch], torch.Tensor] | None
    ) -> None:
        """Run `fn(modules_by_path, tokens, batch)` (e.g. the generated module) instead of the interpreter."""
        self._forward_fn = fn

    def module(self, path: str) -> nn.Module:
        return self._paths[path]

    def load_tensors(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Install loaded tensors by runtime parameter name (`layers.0.attn.qkv.weight`)."""
        for name, tensor in tensors:
            owner, attr = self._slots[name]
            declared = owner._parameters[attr]
            if declared is None or declared.shape != tensor.shape:  # both come from the declaration: a bug
                raise RuntimeError(f"internal error: the loader produced {tuple(tensor.shape)} for {name}, "
                                   f"declared {None if declared is None else tuple(declared.shape)}")
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        missing = [n for n, p in self.named_parameters() if p.is_meta]
        if missing:
            raise RuntimeError(f"parameters not loaded: {missing[:5]}")

    def load_plan(self, plan: RankPlan, directory: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, progress: bool | None = None) -> None:
        self.load_tensors(stream(plan, directory, device=device, dtype=dtype, progress=progress))

    def allocate_kv_cache(self, num_slots: int, dtype: torch.dtype, device: str | torch.device) -> KVCache:
        ks, vs = [], []
        for m in self.cache_modules:
            shape = (num_slots, m.kv_local, m.head_dim)
            ks.append(torch.zeros(shape, dtype=dtype, device=device))
            vs.append(torch.zeros(shape, dtype=dtype, device=device))
        return KVCache(ks, vs)

    def forward(self, tokens: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:  # type: ignore[override]
        if self._forward_fn is not None:
            return self._forward_fn(self._paths, tokens, batch)
        env: dict[str, torch.Tensor] = {FORWARD_INPUT: tokens}
        for op, frees in zip(self.program, self.frees, strict=True):
            args = [env[v] if isinstance(v, str) else v for v in op.inputs]
            if op.kind == "call":
                assert op.module is not None
                env[op.outputs[0]] = self._paths[op.module](*args, batch)
            elif op.kind == "add_norm":
                assert op.module is not None
                normed, summed = self._paths[op.module].forward_add(args[0], args[1], batch)
                env[op.outputs[0]], env[op.outputs[1]] = summed, normed
            else:
                env[op.outputs[0]] = _ARITH[op.kind](args[0], args[1])
            for name in frees:
                del env[name]
        return env[FORWARD_OUTPUT]


_ARITH = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}
