"""Tiny random transformers models of a spec's architecture, saved as safetensors."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..spec.loaded import LoadedSpec


def _architecture_class(name: str) -> Any:
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise UserError(f"transformers {transformers.__version__} has no class `{name}`")
    return cls


def build_reference(spec: LoadedSpec, overrides: Mapping[str, Any] | None = None, seed: int = 0,
                    directory: str | Path | None = None) -> Path:
    """Build a random model with the transformers class of the spec from its `example_config`.

    Weights are drawn with a larger std than HF's init so every path matters numerically;
    saved with `save_pretrained` (safetensors). Returns the checkpoint directory.
    """
    from transformers import AutoConfig

    if not spec.spec.example_config:
        raise UserError(f"{spec.file}: `check` without --model needs an `example_config` in the spec")
    cfg_dict = {**spec.spec.example_config, **(overrides or {})}
    arch = spec.spec.serves.architectures[0]
    model_type = cfg_dict.get("model_type") or (spec.spec.serves.model_types or [None])[0]
    if model_type is None:
        raise UserError(f"{spec.file}: example_config needs `model_type`")
    config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg_dict.items() if k != "model_type"})
    config.architectures = [arch]
    torch.manual_seed(seed)
    model = _architecture_class(arch)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.ndim == 1:  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
    out = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix=f"minisgl-{spec.spec.name}-"))
    model.save_pretrained(out, safe_serialization=True)
    return out


def load_reference(directory: str | Path, architecture: str) -> Any:
    cls = _architecture_class(architecture)
    try:
        model = cls.from_pretrained(str(directory), torch_dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = cls.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
    return model.eval()
