"""Helpers shared by the test modules (tests import from here, never from each other)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
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


def require_demo() -> Path:
    """The demo model directory; a failure in CI (where .ci/run prepares it), a skip elsewhere."""
    if not (DEMO / "config.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{DEMO} missing: .ci/run must run tools/prepare_demo_model.py")
        pytest.skip("demo model not prepared: python tools/prepare_demo_model.py")
    return DEMO


def tiny_with_demo_tokenizer(spec: str, overrides: dict[str, Any], seed: int, out: Path) -> Path:
    """A tiny random transformers checkpoint of `spec` in `out`, with the demo model's tokenizer
    (so prompts are text, as a user's are)."""
    require_demo()
    build_reference(load_ir(SPECS / f"{spec}.yaml"), overrides, seed=seed, directory=out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, out / name)
    return out


def cli_generate_ids(model: Path, prompts: list[str], tp: int, *options: str) -> list[str]:
    """The `ids: ...` lines of `minisgl-decl generate` on the CPU (one per prompt) at tensor-parallel size `tp`."""
    cmd = [sys.executable, "-m", "minisgl_decl.cli.main", "generate", *prompts, "--model", str(model)]
    cmd += ["--raw", "--tp", str(tp), "--show-ids", "--device", "cpu", "--chunked-prefill-size", "4", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    ids = [line for line in done.stdout.splitlines() if line.startswith("ids: ")]
    assert len(ids) == len(prompts), done.stdout
    return ids


def hf_greedy(model: Path, arch: str, prompts: list[list[int]], eos_ids: list[int], new: int) -> list[list[int]]:
    """transformers greedy `generate`, one prompt at a time, the new tokens of each (EOS included
    when it stops early): the truth the engine tests compare with."""
    from minisgl_decl.parity.hf_reference import load_reference

    hf = load_reference(model, arch)
    out = []
    for p in prompts:
        with torch.inference_mode():
            ids = hf.generate(
                torch.tensor([p]), max_new_tokens=new, do_sample=False, eos_token_id=eos_ids, pad_token_id=eos_ids[0]
            )
        out.append(ids[0, len(p) :].tolist())
    return out


def chat_ids(tokenizer: Any, chats: list[list[dict[str, str]]]) -> list[list[int]]:
    """Token ids of chat conversations through the tokenizer's chat template, ready for generation."""
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def load_demo_engine_model() -> Any:
    """The demo model loaded for the engine (skips when it is absent, as `require_demo`)."""
    from minisgl_decl.engine import EngineConfig
    from minisgl_decl.engine.loader import load_engine_model

    require_demo()
    return load_engine_model(EngineConfig(model=DEMO), progress=False)
