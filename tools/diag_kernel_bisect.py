"""Which kernel family makes a spec's `check` fail on the GPU: rerun `check` with one
family at a time forced to its torch reference (the rest on Triton) and print the verdicts.

    python tools/diag_kernel_bisect.py specs/gpt_oss.yaml --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io

import minisgl_kernels as kernels
from minisgl_decl.cli.main import main as cli

FAMILIES: dict[str, tuple[str, ...]] = {
    "none": (),
    "attention": ("extend_attention", "decode_attention", "decode_attention_paged"),
    "decode": ("decode_attention", "decode_attention_paged"),
    "moe": ("fused_moe",),
    "rope": ("apply_rope",),
    "norm": ("rmsnorm", "add_rmsnorm"),
    "act": ("act_and_mul",),
}


def run(spec: str, device: str, family: str) -> str:
    saved = {name: getattr(kernels, name) for name in FAMILIES[family]}
    for name, fn in saved.items():
        setattr(kernels, name, functools.partial(fn, backend="torch"))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            cli(["check", spec, "--device", device])
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("spec")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    for family in FAMILIES:
        text = run(args.spec, args.device, family)
        print(f"--- torch reference for: {family}")
        print(text if family == "none" else "\n".join(line for line in text.splitlines() if "Δlogit" in line))


if __name__ == "__main__":
    main()
