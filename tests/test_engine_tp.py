"""The engine at TP=2 (two processes over gloo, the launcher) gives TP=1's greedy tokens.

The demo model's 9 heads do not split over 2 ranks, so this builds a tiny random Llama
with the transformers class (8 heads, 2 KV heads, the demo tokenizer's vocabulary) and
runs `minisgl-decl generate --tp N` on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import DEMO, ROOT, SPECS

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.spec.compile import load_ir

PROMPTS = ["The tide comes in and", "Seven sailors sat on a", "In the harbour at night the"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DEMO / "tokenizer.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{DEMO} missing: .ci/run must run tools/prepare_demo_model.py")
        pytest.skip("demo model not prepared: python tools/prepare_demo_model.py")
    out = tmp_path_factory.mktemp("tiny-llama")
    overrides = {
        "vocab_size": 49152,
        "num_hidden_layers": 2,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    build_reference(load_ir(SPECS / "llama.yaml"), overrides, seed=3, directory=out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / name, out / name)
    return out


def generate_ids(model: Path, tp: int, overlap: str = "auto") -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "minisgl_decl.cli.main",
        "generate",
        *PROMPTS,
        "--model",
        str(model),
        "--raw",
        "--tp",
        str(tp),
        "--max-tokens",
        "32",
        "--show-ids",
        "--device",
        "cpu",
        "--max-kv-tokens",
        "1024",
        "--chunked-prefill-size",
        "4",
        "--overlap",
        overlap,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    ids = [line for line in done.stdout.splitlines() if line.startswith("ids: ")]
    assert len(ids) == len(PROMPTS), done.stdout
    return ids


@pytest.mark.slow
def test_tp2_gives_the_tokens_of_tp1(tiny: Path) -> None:
    one = generate_ids(tiny, 1)
    assert all(len(line.split()) == 33 for line in one), one  # 32 tokens each ("ids:" + 32)
    assert generate_ids(tiny, 2) == one


@pytest.mark.slow
def test_tp2_with_overlap_gives_the_tokens_of_tp1(tiny: Path) -> None:
    """Workers take the previous step's sampled ids from rank 0's broadcast (RUN_SAMPLED)."""
    one = generate_ids(tiny, 1)
    assert generate_ids(tiny, 2, overlap="on") == one
