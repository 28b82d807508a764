"""Tiny random transformers models of a spec's architecture, saved as safetensors."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import UserError, show
from ..limits import hint, limit
from ..spec.ir import SpecIR

#: what transformers may raise on a bad checkpoint or config (its own errors derive from these)
TRANSFORMERS_FAILURES = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    RuntimeError,
    ImportError,
    NotImplementedError,
    AssertionError,
    SafetensorError,
)


def _architecture_class(name: str) -> Any:
    """The transformers model class `name`; only `PreTrainedModel` subclasses are accepted."""
    import transformers

    if not name.isidentifier() or name.startswith("_"):
        raise UserError(f"`{show(name)}` is not a transformers model class name")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise UserError(f"transformers {transformers.__version__} has no class `{show(name)}`")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise UserError(
            f"`{show(name)}` (serves.architectures) is not a transformers model class "
            "(a PreTrainedModel subclass such as LlamaForCausalLM)"
        )
    return cls


def _failed(what: str, exc: BaseException) -> UserError:
    text = show(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 300)
    return UserError(f"transformers could not {what}: {type(exc).__name__}: {text}")


def _check_random_size(spec: SpecIR, cfg: Mapping[str, Any]) -> None:
    """Refuse a random reference model larger than MAX_RANDOM_PARAMS before transformers allocates it."""
    from ..pipeline import compile_spec

    graph = compile_spec(spec, None, hf_config=cfg).graph
    total = 0
    for _name, decl, _module in graph.parameters:
        n = 1
        for d in decl.shape:
            n *= d
        total += n
    if total > limit("MAX_RANDOM_PARAMS"):
        raise UserError(
            f"{spec.file}: the random model from `example_config` would have {total:,} parameters; "
            f"`check` without --model builds a tiny one {hint('MAX_RANDOM_PARAMS')} "
            f"(layers={graph.num_layers}; shrink the sizes in example_config)"
        )


def require_reference_release(spec: SpecIR) -> None:
    """Refuse a transformers older than the spec's `serves.transformers_min`: its model class for
    the architecture computes something else (e.g. a constant where the config has a value), so a
    parity check against it would blame our model for transformers' difference."""
    if spec.transformers_min is None:
        return
    import transformers
    from packaging.version import InvalidVersion, Version

    try:
        installed = Version(transformers.__version__)
    except InvalidVersion:
        return  # a development build: nothing to compare
    if installed < Version(spec.transformers_min):
        raise UserError(
            f"{spec.serves_at}: `check` needs transformers >= {spec.transformers_min} as the reference for "
            f"{', '.join(spec.architectures)} (serves.transformers_min); installed {transformers.__version__}, "
            "whose class computes something else. Upgrade transformers (pip install -U transformers)"
        )


def build_reference(
    spec: SpecIR, overrides: Mapping[str, Any] | None = None, seed: int = 0, directory: str | Path | None = None
) -> Path:
    """Build a random model with the transformers class of the spec from its `example_config`.

    Weights (and the float buffers the checkpoint stores) are drawn with a larger std than
    HF's init so every path matters numerically;
    saved with `save_pretrained` (safetensors). Returns the checkpoint directory.
    """
    from transformers import AutoConfig

    if not spec.example_config:
        raise UserError(f"{spec.file}: `check` without --model needs an `example_config` in the spec")
    require_reference_release(spec)
    cfg_dict = {**spec.example_config, **(overrides or {})}
    arch = spec.architectures[0]
    model_type = cfg_dict.get("model_type") or (spec.model_types or (None,))[0]
    if model_type is None:
        raise UserError(f"{spec.file}: example_config needs `model_type`")
    cls = _architecture_class(arch)
    _check_random_size(spec, cfg_dict)
    try:
        config = AutoConfig.for_model(model_type, **{k: v for k, v in cfg_dict.items() if k != "model_type"})
        config.architectures = [arch]
        torch.manual_seed(seed)
        model = cls(config).eval()
    except TRANSFORMERS_FAILURES as exc:
        raise _failed(f"build a random `{show(arch)}` from example_config", exc) from None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.ndim == 1:  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
        # float buffers the checkpoint stores (a router's score correction bias) matter too
        saved = set(model.state_dict())
        for name, b in model.named_buffers():
            if name in saved and b.is_floating_point():
                b.normal_(0.0, 0.1)
    out = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix=f"minisgl-{spec.name}-"))
    model.save_pretrained(out, safe_serialization=True)
    return out


def load_reference(directory: str | Path, architecture: str) -> Any:
    """transformers' own model from `directory`: no remote code, no network, failures as clear errors."""
    cls = _architecture_class(architecture)
    # the definitional (eager) attention and experts, the same on every device (transformers
    # would otherwise pick grouped-GEMM experts wherever torch can dispatch them)
    kwargs = {
        "attn_implementation": "eager",
        "experts_implementation": "eager",
        "trust_remote_code": False,
        "local_files_only": True,
    }
    try:
        try:
            model = cls.from_pretrained(str(directory), torch_dtype=torch.float32, **kwargs)
        except TypeError:
            model = cls.from_pretrained(str(directory), dtype=torch.float32, **kwargs)
    except TRANSFORMERS_FAILURES as exc:
        raise _failed(f"load {show(directory)} as `{show(architecture)}`", exc) from None
    return model.eval()


@contextlib.contextmanager
def as_float64(model: Any, device: str | torch.device = "cpu") -> Iterator[Any | None]:
    """transformers' model converted to float64 in place for the block (the reference for its
    own float32 noise), then back: float32 -> float64 -> float32 is exact, and no second copy
    of a large model is held. Experts run their eager path there (grouped GEMMs take no
    float64). Yields None where the model cannot run in float64: checks then have no floor."""
    impl = getattr(model.config, "_experts_implementation", None)
    can_set = hasattr(model, "set_experts_implementation")
    model.to(torch.float64)
    try:
        if can_set:
            with contextlib.suppress(TRANSFORMERS_FAILURES):  # if not, the trial forward below decides
                model.set_experts_implementation("eager")
        try:
            with torch.inference_mode():
                model(torch.zeros((1, 2), dtype=torch.long, device=device), use_cache=False)
            usable = True
        except TRANSFORMERS_FAILURES:
            usable = False
        yield model if usable else None
    finally:
        model.to(torch.float32)
        if can_set and isinstance(impl, str):
            with contextlib.suppress(TRANSFORMERS_FAILURES):
                model.set_experts_implementation(impl)


def key_renamer(model: Any) -> Callable[[str], str]:
    """Checkpoint key -> the parameter name in `model`, through transformers' own load-time
    conversions (e.g. a renamed output head `embed_out.*` -> `lm_head.*`, per-expert tensors -> stacked);
    the identity where this transformers has none."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except TRANSFORMERS_FAILURES:
        return lambda key: key
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    names = dict.fromkeys(n for n, _ in model.named_parameters())
    prefix = getattr(model, "base_model_prefix", None)

    def rename(key: str) -> str:
        try:
            return str(rename_source_key(key, renamings, converters, prefix, names)[0])
        except TRANSFORMERS_FAILURES:
            return key

    return rename
