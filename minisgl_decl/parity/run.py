"""One parity run at TP=1: build or take a checkpoint, load it both ways, compare, diagnose."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..pipeline import Compiled, compile_spec, load_model
from ..runtime.model import CompiledModel
from ..runtime.runner import ModelRunner
from ..spec.ir import SpecIR
from .check import (
    DEFAULT_NOISE_MULTIPLE,
    DEFAULT_TOLERANCE,
    CheckResult,
    Inputs,
    Reference,
    check_names,
    first_failing,
    hf_reference_fn,
    run_parity_checks,
)
from .diagnose import Diagnosis, diagnose, scenarios
from .hf_reference import as_float64, build_reference, key_renamer, load_reference, require_reference_release
from .modmap import module_map

KV_SLOTS = 256


@dataclass(frozen=True)
class ParityReport:
    results: list[CheckResult]
    diagnosis: Diagnosis | None  # set when a check failed (see `diagnose.py`)


def quiet_transformers() -> None:
    """No progress bars or info/warning logs from transformers in our reports."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def float64_reference(hf: nn.Module, vocab: int, seed: int, device: str = "cpu") -> Reference | None:
    """transformers' float64 logits of every sequence the checks use (`Inputs.draw(vocab, seed)`),
    computed up front with the model converted in place; None where it cannot run in float64."""
    with as_float64(hf, device) as hf64:
        if hf64 is None:
            return None
        ref = hf_reference_fn(hf64, device)
        logits = {tuple(ids): ref(ids) for ids in Inputs.draw(vocab, seed).sequences()}
    return lambda ids: logits[tuple(ids)]


def diagnose_failure(
    compiled: Compiled,
    model: CompiledModel,
    new_runner: Callable[[], ModelRunner],
    hf: nn.Module | None,
    vocab: int,
    seed: int,
    failing: int,
    multiple: float,
    device: str = "cpu",
) -> Diagnosis | None:
    """Replay check `failing` with module outputs recorded; the comparison where `hf` is given."""
    inputs = Inputs.draw(vocab, seed)
    names = [n for n, _ in hf.named_modules()] if hf is not None else []
    rename = key_renamer(hf) if hf is not None else str
    mmap = module_map(compiled.spec, compiled.graph, names, rename)
    replay = scenarios(inputs, failing)
    return diagnose(model, new_runner, mmap, replay, check_names(inputs)[failing], hf, multiple, device)


def check_checkpoint(
    spec: SpecIR,
    model_dir: str | Path,
    seed: int = 0,
    device: str = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
    multiple: float = DEFAULT_NOISE_MULTIPLE,
    reference_dir: str | Path | None = None,
) -> ParityReport:
    """Float32 parity with the noise floor of a float64 reference; on a failure, the diagnosis.

    On CUDA both sides run there (ours through the Triton kernels). `reference_dir`: where
    transformers reads its weights, if not `model_dir`.
    """
    require_reference_release(spec)
    compiled = compile_spec(spec, model_dir)
    assert compiled.checkpoint is not None
    arch = compiled.checkpoint.config.get("architectures") or spec.architectures
    hf = load_reference(reference_dir or model_dir, arch[0]).to(device)
    vocab = int(hf.config.get_text_config().vocab_size)
    ref64 = float64_reference(hf, vocab, seed, device)  # before our model: peak memory as without it
    model = load_model(compiled, device=device)

    def new_runner() -> ModelRunner:
        return ModelRunner(model, KV_SLOTS, device=device)

    results = run_parity_checks(new_runner, hf_reference_fn(hf, device), vocab, seed, ref64)
    failing = first_failing(results, tolerance, multiple)
    if failing is None:
        return ParityReport(results, None)
    found = diagnose_failure(compiled, model, new_runner, hf, vocab, seed, failing, multiple, device)
    return ParityReport(results, found)


def check_random_model(
    spec: SpecIR,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    tolerance: float = DEFAULT_TOLERANCE,
    multiple: float = DEFAULT_NOISE_MULTIPLE,
) -> ParityReport:
    with tempfile.TemporaryDirectory(prefix="minisgl-check-") as tmp:
        build_reference(spec, overrides, seed=seed, directory=tmp)
        return check_checkpoint(spec, tmp, seed, device, tolerance, multiple)


def parity_on_checkpoint(spec: SpecIR, model_dir: str | Path, seed: int = 0, device: str = "cpu") -> list[CheckResult]:
    return check_checkpoint(spec, model_dir, seed, device).results


def parity_on_random_model(
    spec: SpecIR, overrides: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu"
) -> list[CheckResult]:
    return check_random_model(spec, overrides, seed, device).results
