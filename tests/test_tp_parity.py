"""Parity with transformers at TP=2 and TP=4, one process per rank (gloo on CPU).

Each TP size starts its ranks once and runs every case in that process group
(`python -m minisgl_decl.parity.tp`), so the tests pay the start-up and imports once.
Truth: transformers' logits for the same weights (rank 0 runs it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _helpers import ROOT, SPECS, make_fused
from safetensors.torch import load_file, save_file

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.runtime.distributed import _verdict, launch
from minisgl_decl.spec.compile import load_ir

pytestmark = pytest.mark.slow  # one process per rank; run by CI, skip locally with -m "not slow"


def _broken(tmp: Path) -> dict[str, Any]:
    """Our copy of a tiny Llama with layer 1's down projection scaled; transformers reads the original."""
    original = build_reference(load_ir(SPECS / "llama.yaml"), directory=tmp / "original")
    ours = tmp / "ours"
    shutil.copytree(original, ours)
    tensors = load_file(str(ours / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"].mul_(1.5)
    save_file(tensors, str(ours / "model.safetensors"), metadata={"format": "pt"})
    expect = ["layers.1.mlp", "model.layers.1.mlp", 1]  # our module, transformers', the layer
    return {"spec": str(SPECS / "llama.yaml"), "model": str(ours), "reference": str(original), "expect_first": expect}


def _cases(tp: int, fused: tuple[Path, Path, Path], broken: dict[str, Any]) -> list[dict[str, Any]]:
    spec_file, fused_dir, original = fused
    cases: list[dict[str, Any]] = [{"spec": str(SPECS / f"{n}.yaml")} for n in ("llama", "qwen2", "qwen3", "mistral")]
    cases += [
        {"spec": str(SPECS / "llama.yaml"), "overrides": {"num_key_value_heads": 1}},  # kv=1: replicated
        {"spec": str(SPECS / "llama.yaml"), "overrides": {"num_key_value_heads": 4}},  # kv=4: split at tp 2/4
        # unusual sizes: prime vocab (padded shards), ffn not a power of two, tied embeddings
        {
            "spec": str(SPECS / "qwen3.yaml"),
            "overrides": {"vocab_size": 97 if tp == 2 else 101, "intermediate_size": 60, "tie_word_embeddings": True},
        },
        {"spec": str(spec_file), "model": str(fused_dir), "reference": str(original)},  # fused qkv / gate_up
        # routed experts: every expert's ffn sharded like a dense MLP, router replicated
        {"spec": str(SPECS / "qwen3_moe.yaml")},
        {"spec": str(SPECS / "mixtral.yaml")},
    ]
    if tp == 2:  # the other specs: TP=1 (test_parity.py) and TP=2 here (CI time), in the same process group
        cases += [{"spec": str(SPECS / f"{n}.yaml")} for n in FAMILIES_TP2]
        cases += [{"spec": str(SPECS / f"{n}.yaml"), "overrides": o} for n, o in FAMILY_VARIANTS_TP2]
        cases.append(broken)  # `check` names the diverging module at TP=2 (hooks on both ranks)
    return cases


FAMILIES_TP2 = (
    "phi3",
    "gemma",
    "starcoder2",
    "phi",
    "smollm3",
    "stablelm",
    "qwen2_moe",
    "olmo2",
    "gpt_neox",
    "cohere",
    "gpt2",
    "olmoe",
    "deepseek_v3",
    "gpt_oss",
    "gemma2",  # with the families above, every spec in specs/ is checked at TP 2 here
    "gemma3",
    "granite",
)
FAMILY_VARIANTS_TP2: tuple[tuple[str, dict[str, Any]], ...] = (
    # parallel residual; kv=1 < tp: the per-head k norm row and full-width k stats on replicated heads
    ("stablelm", {"use_parallel_residual": True, "num_key_value_heads": 1}),
    ("olmo2", {"num_key_value_heads": 1}),
    ("cohere", {"use_qk_norm": True, "attention_bias": True, "logit_scale": 1.0}),
    ("phi", {"qk_layernorm": True}),
    ("deepseek_v3", {"q_lora_rank": None}),  # latent attention with one q_proj
    ("gpt_oss", {"num_key_value_heads": 1}),  # kv=1 < tp: replicated kv heads beside per-rank sinks
)


def _run_group(tp: int, tmp: Path) -> list[dict[str, Any]]:
    cases = _cases(tp, make_fused(tmp / "fused"), _broken(tmp / "broken"))
    (tmp / "cases.json").write_text(json.dumps(cases))
    code = launch([sys.executable, "-m", "minisgl_decl.parity.tp", str(tmp / "cases.json"), str(tmp / "out.json")], tp)
    assert code == 0
    return list(json.loads((tmp / "out.json").read_text()))


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def group(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict[str, Any]]]:
    tp = int(request.param)
    return tp, _run_group(tp, tmp_path_factory.mktemp(f"tp{tp}"))


def test_every_case_matches_transformers(group: tuple[int, list[dict[str, Any]]]) -> None:
    tp, results = group
    assert len(results) == 10 + (len(FAMILIES_TP2) + len(FAMILY_VARIANTS_TP2) + 1 if tp == 2 else 0)
    for r in results:
        assert "error" not in r, (tp, r)
        if "expect_first" in r["case"]:  # broken on purpose: FAILs, and the diagnosis names what was broken
            first = r["diagnosis"]["first"]
            assert [first["ours"], first["hf"], first["layer"]] == r["case"]["expect_first"], r["diagnosis"]
            assert max(d for _, d in r["results"]) > 1e-2
            continue
        assert r["diagnosis"] is None and len(r["noise_floors"]) == 4
        assert r["results"][0][0].startswith("prefill")
        assert len(r["results"]) == 4  # prefill, varlen batch, prefix + extend, paged decode
        worst = max(d for _, d in r["results"])
        assert worst <= 1e-4, (tp, r["case"], r["results"])


def test_cli_check_tp2_prints_the_tp1_report() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "check", "specs/qwen3.yaml", "--tp", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].startswith("check qwen3: tiny random Qwen3ForCausalLM") and "tp=2" in lines[0]
    assert len(lines) == 6  # header, 4 checks, verdict: rank 1 printed nothing
    assert lines[-1].startswith("PASS max_abs_diff=")
    assert float(lines[-1].split("=")[1]) <= 1e-4


def test_launcher_reports_the_rank_that_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "rank1.log"
    log.write_text("boom on rank 1\n")
    assert _verdict([0, 0], [None, None]) == 0
    assert _verdict([1, -15], [None, log]) == 1  # rank 0 failed and said why: its code
    assert _verdict([-15, 3], [None, log]) == 3  # rank 0 stopped because rank 1 failed: rank 1's log
    assert "rank 1 of 2 failed (exit code 3)" in capsys.readouterr().err
    code = launch([sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['RANK']) * 5)"], 2)
    assert code == 5


def test_every_spec_is_checked_at_tp2() -> None:
    """A new spec in specs/ must join the TP 2 group (the issue: every spec at TP 1 and 2 in CI)."""
    in_group = {"llama", "qwen2", "qwen3", "mistral", "qwen3_moe", "mixtral", *FAMILIES_TP2}
    assert {p.stem for p in SPECS.glob("*.yaml")} <= in_group
