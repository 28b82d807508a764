"""Helpers shared by the test modules (tests import from here, never from each other)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.spec.compile import load_ir

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
DEMO = ROOT / "models" / "smollm2-135m-instruct"  # tools/prepare_demo_model.py

FUSED_RULES = {
    "layers.{i}.attn.qkv.weight": {"from": "model.layers.{i}.self_attn.qkv_proj.weight"},
    "layers.{i}.mlp.gate_up.weight": {"from": "model.layers.{i}.mlp.gate_up_proj.weight"},
}


def make_fused(
    out: Path, overrides: dict[str, object] | None = None, extra_row: bool = False
) -> tuple[Path, Path, Path]:
    """(fused spec file, fused checkpoint, original checkpoint) built from specs/llama.yaml."""
    raw = yaml.safe_load((SPECS / "llama.yaml").read_text())
    raw["name"] = "llama_fused"
    raw["weights"]["params"].update(FUSED_RULES)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "llama_fused.yaml"
    spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    original = build_reference(load_ir(SPECS / "llama.yaml"), overrides, directory=out / "original")
    fused = out / "fused"
    shutil.copytree(original, fused)
    t = load_file(str(fused / "model.safetensors"))
    layers = int(raw["example_config"]["num_hidden_layers"])
    for i in range(layers):
        p = f"model.layers.{i}"
        qkv = [t.pop(f"{p}.self_attn.{n}_proj.weight") for n in "qkv"]
        if extra_row and i == 1:
            qkv.append(torch.zeros(1, qkv[0].shape[1]))
        t[f"{p}.self_attn.qkv_proj.weight"] = torch.cat(qkv)
        t[f"{p}.mlp.gate_up_proj.weight"] = torch.cat(
            [t.pop(f"{p}.mlp.gate_proj.weight"), t.pop(f"{p}.mlp.up_proj.weight")]
        )
    save_file(t, str(fused / "model.safetensors"))
    return spec_file, fused, original
