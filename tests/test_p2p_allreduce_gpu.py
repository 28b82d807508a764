"""The one-shot peer-to-peer all-reduce (runtime/p2p_allreduce.py) on two GPUs of one host.

1. Its sums equal NCCL's bit for bit (two ranks: one addition per element either way) and
   the float64 sum within rounding, for float32 and bfloat16 from 16 bytes to past its limit,
   back to back, and inside a replayed CUDA graph (`_p2p_ranks.py`, one process per GPU).
2. `generate --tp 2` in float32 (CUDA graphs and overlap at their defaults) gives the greedy
   tokens of `--tp 1`, with the one-shot path (opt-in: MINISGL_P2P_ALLREDUCE_MAX_BYTES) and
   with NCCL alone (the default).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import ROOT, SPECS

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.parity.tokenizer import write_word_tokenizer
from minisgl_decl.runtime.distributed import launch
from minisgl_decl.runtime.p2p_allreduce import MAX_BYTES_ENV
from minisgl_decl.spec.compile import load_ir


def _two_peer_gpus() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() >= 2 and torch.cuda.can_device_access_peer(0, 1)


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _two_peer_gpus(), reason="needs two CUDA GPUs with peer-to-peer access"),
]


ON = {MAX_BYTES_ENV: str(1 << 20)}  # the one-shot path is opt-in


def test_one_shot_sums_equal_nccl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ON.items():
        monkeypatch.setenv(k, v)
    report = tmp_path / "report.json"
    code = launch([sys.executable, str(ROOT / "tests" / "_p2p_ranks.py"), str(report)], 2)
    assert code == 0, "a rank saw a wrong sum (its message is above)"
    got = json.loads(report.read_text())
    assert got["p2p"] is True  # peer access exists, so the one-shot path must have been set up
    assert got["problems"] == [] and got["checked_sizes"] == 12


PROMPTS = ["t5 t9 t33 t7 t100 t42", "t3 t3 t150 t2", "t200 t11 t17 t19 t23 t29 t31 t37"]


def _generate(model: Path, tp: int, env_extra: dict[str, str]) -> tuple[list[str], str]:
    cmd = [sys.executable, "-m", "minisgl_decl.cli.main", "generate", *PROMPTS, "--model", str(model)]
    cmd += ["--raw", "--tp", str(tp), "--show-ids", "--device", "cuda", "--dtype", "float32", "--max-tokens", "24"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = [line for line in done.stdout.splitlines() if line.startswith("ids: ")]
    assert len(ids) == len(PROMPTS), done.stdout
    return ids, done.stderr


def test_tp2_greedy_tokens_equal_tp1_in_float32(tmp_path: Path) -> None:
    overrides = {"vocab_size": 211, "num_hidden_layers": 2, "max_position_embeddings": 256}
    build_reference(load_ir(SPECS / "llama.yaml"), overrides, seed=5, directory=tmp_path)
    write_word_tokenizer(tmp_path, 211)
    one, _ = _generate(tmp_path, 1, {})
    assert all(len(line.split()) > 10 for line in one), one
    two, log = _generate(tmp_path, 2, ON)
    assert "tp: all-reduce: one-shot peer-to-peer" in log, log[-2000:]
    two_nccl, log_nccl = _generate(tmp_path, 2, {MAX_BYTES_ENV: "0"})
    assert "tp: all-reduce: NCCL" in log_nccl, log_nccl[-2000:]
    assert two == one
    assert two_nccl == one
