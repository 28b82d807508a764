"""The pipeline in one place: spec -> config -> graph -> plan -> loaded model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .config.resolve import ResolvedConfig, resolve_config
from .errors import UserError
from .graph.build import ModelGraph, build_graph
from .plan.build import LoadPlan, build_plan
from .plan.checkpoint import CheckpointIndex, load_config, scan_checkpoint
from .plan.execute import SAFETENSORS_NAMES, TORCH_DTYPES
from .runtime.model import CompiledModel
from .spec.compile import compile_loaded, load_ir
from .spec.ir import SpecIR
from .spec.loaded import LoadedSpec


@dataclass(frozen=True)
class Compiled:
    spec: SpecIR
    config: ResolvedConfig
    graph: ModelGraph
    checkpoint: CheckpointIndex | None = None
    plan: LoadPlan | None = None


def hf_config_for(spec: SpecIR, model_dir: str | Path | None) -> Mapping[str, Any]:
    if model_dir is not None:
        return load_config(Path(model_dir))
    if not spec.example_config:
        raise UserError(f"{spec.file}: no --model given and the spec has no `example_config`")
    return spec.example_config


def as_ir(spec: SpecIR | LoadedSpec | str | Path) -> SpecIR:
    """The typed form of a spec given as that form, a loaded document or a file (no catalogue checks)."""
    if isinstance(spec, SpecIR):
        return spec
    return compile_loaded(spec) if isinstance(spec, LoadedSpec) else load_ir(spec)


def compile_spec(
    spec: SpecIR | LoadedSpec | str | Path,
    model_dir: str | Path | None = None,
    tp: int = 1,
    hf_config: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Compiled:
    """Validate-free compile of a spec (typed form, loaded document or file); with `model_dir`, the loader plan for
    loading parameters as `dtype` (recorded in the plan, whose casts show it)."""
    ir = as_ir(spec)
    if tp < 1:
        raise UserError(f"--tp must be at least 1, got {tp}")
    hf = hf_config if hf_config is not None else hf_config_for(ir, model_dir)
    config = resolve_config(ir, hf)
    graph = build_graph(ir, config, tp)
    if model_dir is None:
        return Compiled(ir, config, graph)
    ckpt = scan_checkpoint(model_dir)
    archs = list(ckpt.config.get("architectures") or [])
    if archs and not set(archs) & set(ir.architectures):
        raise UserError(
            f"{model_dir}: checkpoint architecture {', '.join(archs)} is not served by {ir.file} "
            f"(serves {', '.join(ir.architectures)})"
        )
    plan = build_plan(ir, graph, ckpt, _dtype_name(dtype))
    return Compiled(ir, config, graph, ckpt, plan)


def load_model(
    compiled: Compiled,
    rank: int = 0,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
) -> CompiledModel:
    """Build rank `rank`'s modules on the meta device and stream its shard of the checkpoint in.

    Parameters are loaded as the plan's dtype (`compile_spec(dtype=...)`); a `dtype` given
    here instead is recorded in the plan used. `progress`: a byte progress bar on stderr
    (None: only when stderr is a terminal).
    """
    if compiled.plan is None or compiled.checkpoint is None:
        raise UserError("no checkpoint: pass --model DIR to load weights")
    plan = compiled.plan if dtype is None else replace(compiled.plan, dtype=_dtype_name(dtype))
    model = CompiledModel(compiled.graph, rank, device)
    model.load_plan(
        plan.ranks[rank],
        compiled.checkpoint.directory,
        device=device,
        dtype=TORCH_DTYPES[plan.dtype],
        progress=progress,
    )
    return model


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype not in SAFETENSORS_NAMES or not dtype.is_floating_point:
        raise UserError(f"cannot load parameters as {dtype}; use a floating-point dtype such as torch.bfloat16")
    return SAFETENSORS_NAMES[dtype]
