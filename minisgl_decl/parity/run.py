"""One parity run at TP=1: build or take a checkpoint, load it both ways, compare."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..pipeline import compile_spec, load_model
from ..runtime.runner import ModelRunner
from ..spec.ir import SpecIR
from .check import CheckResult, hf_reference_fn, run_parity_checks
from .hf_reference import build_reference, load_reference

KV_SLOTS = 256


def quiet_transformers() -> None:
    """No progress bars or info/warning logs from transformers in our reports."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def parity_on_checkpoint(spec: SpecIR, model_dir: str | Path, seed: int = 0, device: str = "cpu") -> list[CheckResult]:
    """Float32 parity; on CUDA both sides run there (ours through the Triton kernels)."""
    compiled = compile_spec(spec, model_dir)
    assert compiled.checkpoint is not None
    arch = compiled.checkpoint.config.get("architectures") or spec.architectures
    hf = load_reference(model_dir, arch[0]).to(device)
    model = load_model(compiled, device=device)
    vocab = int(hf.config.get_text_config().vocab_size)
    return run_parity_checks(
        lambda: ModelRunner(model, KV_SLOTS, device=device), hf_reference_fn(hf, device), vocab, seed
    )


def parity_on_random_model(
    spec: SpecIR, overrides: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu"
) -> list[CheckResult]:
    with tempfile.TemporaryDirectory(prefix="minisgl-check-") as tmp:
        build_reference(spec, overrides, seed=seed, directory=tmp)
        return parity_on_checkpoint(spec, tmp, seed, device)
