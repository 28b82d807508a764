"""Record module outputs during one forward, on our model and on transformers'.

Forward hooks see calls through `module(...)`; our generated code also calls fused entry
points (`norm.forward_add(x, residual)` returns `(norm(x + residual), x + residual)`),
so every `forward_*` method of a recorded module is wrapped for the duration as well.
A module's output is its first tensor (transformers' attention returns `(out, weights)`),
cloned: later in-place ops must not change what was recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return next((t for t in (first_tensor(o) for o in out) if t is not None), None)
    if isinstance(out, Mapping):
        return next((t for t in (first_tensor(o) for o in out.values()) if t is not None), None)
    return None


class Recorder:
    """name -> outputs of each call, in the order the names were first called."""

    def __init__(self) -> None:
        self.calls: dict[str, list[torch.Tensor]] = {}

    def record(self, name: str, out: Any) -> None:
        t = first_tensor(out)
        if t is not None:
            self.calls.setdefault(name, []).append(t.detach().clone())


def _fused_entry_points(module: nn.Module) -> list[str]:
    return [a for a in dir(type(module)) if a.startswith("forward_") and callable(getattr(type(module), a))]


def _wrap(module: nn.Module, attr: str, name: str, rec: Recorder) -> None:
    bound: Callable[..., Any] = getattr(module, attr)

    def traced(*args: Any, **kwargs: Any) -> Any:
        out = bound(*args, **kwargs)
        rec.record(name, out)
        return out

    object.__setattr__(module, attr, traced)  # an instance attribute shadows the method until removed


@contextmanager
def recording(modules: Mapping[str, nn.Module], fused: bool = False) -> Iterator[Recorder]:
    """Record the outputs of `modules` (name -> module) while the block runs; `fused`: also
    their `forward_*` entry points (our catalogue modules)."""
    rec = Recorder()
    handles = []
    wrapped: list[tuple[nn.Module, str]] = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: rec.record(name, out)))
            for attr in _fused_entry_points(module) if fused else []:
                _wrap(module, attr, name, rec)
                wrapped.append((module, attr))
        yield rec
    finally:
        for h in handles:
            h.remove()
        for module, attr in wrapped:
            object.__delattr__(module, attr)
