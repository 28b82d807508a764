"""`check` that diagnoses: on a FAIL it names the first module diverging from transformers,
and its verdict is relative to transformers' own float32 noise.

Each test breaks something on purpose (a spec in a temporary copy, or one tensor of our
copy of a checkpoint while transformers reads the original); the expected module, layer
and transformers module come from what was broken, never from the code's output.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import SPECS
from safetensors.torch import load_file, save_file

from minisgl_decl.cli.main import main
from minisgl_decl.parity.check import CheckResult, first_failing, verdict
from minisgl_decl.parity.diagnose import Diagnosis
from minisgl_decl.parity.hf_reference import as_float64, build_reference, key_renamer, load_reference
from minisgl_decl.parity.modmap import module_map
from minisgl_decl.parity.run import check_checkpoint, check_random_model, diagnose_failure
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.runtime.runner import ModelRunner
from minisgl_decl.spec.load import load_spec


def _edit(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {src}"
    dst.write_text(text.replace(old, new))
    return dst


def _first(diagnosis: Diagnosis | None) -> tuple[str, str, int | None]:
    assert diagnosis is not None and diagnosis.first is not None, diagnosis
    f = diagnosis.first
    return f.ours, f.hf, f.layer


# --- specs broken in a temporary copy --------------------------------------------------------


def test_wrong_eps_on_one_norm(tmp_path: Path) -> None:
    """mlp_norm's eps 1e-5 -> 0.1: the first module off is layer 0's post-attention norm."""
    spec = _edit(
        SPECS / "llama.yaml",
        tmp_path / "llama.yaml",
        "mlp_norm: {rmsnorm: {dim: hidden, eps: eps}}",
        "mlp_norm: {rmsnorm: {dim: hidden, eps: 0.1}}",
    )
    report = check_random_model(load_spec(spec))
    assert not verdict(report.results)[0]
    assert _first(report.diagnosis) == ("layers.0.mlp_norm", "model.layers.0.post_attention_layernorm", 0)
    d = report.diagnosis
    assert d is not None and d.first is not None and d.last_agreeing is not None
    assert d.last_agreeing.ours == "layers.0.attn"  # what runs just before mlp_norm in the block
    assert d.first.relative > 1e-3 and d.first.max_abs_diff > 10 * d.first.noise_floor
    assert d.check.startswith("prefill")  # the first failing check is the one replayed


def test_wrong_rope_mapping(tmp_path: Path) -> None:
    """Rope settings read from the 4.x key only: a 5.x config loses its llama3 scaling and theta."""
    spec = _edit(
        SPECS / "llama.yaml",
        tmp_path / "llama.yaml",
        "rope:      {rope: {}}",
        "rope:      {rope: {parameters_from: [rope_scaling], default_theta: 500000.0}}",
    )
    report = check_random_model(load_spec(spec))
    assert _first(report.diagnosis) == ("layers.0.attn", "model.layers.0.self_attn", 0)
    d = report.diagnosis
    assert d is not None and d.last_agreeing is not None and d.last_agreeing.ours == "layers.0.attn_norm"


def test_swapped_mlp_rule_in_a_spec_that_extends(tmp_path: Path) -> None:
    """qwen2 (extends llama) with gate and up swapped in its gate_up rule."""
    shutil.copy(SPECS / "llama.yaml", tmp_path / "llama.yaml")
    spec = _edit(
        SPECS / "qwen2.yaml",
        tmp_path / "qwen2.yaml",
        "    layers.{i}.mlp.gate_up.bias: null\n",
        "    layers.{i}.mlp.gate_up.bias: null\n"
        "    layers.{i}.mlp.gate_up.weight:\n"
        "      - model.layers.{i}.mlp.up_proj.weight\n"
        "      - model.layers.{i}.mlp.gate_proj.weight\n",
    )
    report = check_random_model(load_spec(spec))
    assert _first(report.diagnosis) == ("layers.0.mlp", "model.layers.0.mlp", 0)


# --- one tensor of our checkpoint copy broken, transformers reading the original -----------


def _corrupt(original: Path, out: Path, key: str, how: str) -> Path:
    shutil.copytree(original, out)
    tensors = load_file(str(out / "model.safetensors"))
    assert key in tensors, sorted(tensors)[:8]
    if how == "nan":
        tensors[key].view(-1)[3] = float("nan")
    else:
        tensors[key].mul_(1.5)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_a_later_layer_in_another_naming_scheme(tmp_path: Path) -> None:
    """GPT-2 (transformer.h.N.ln_2 <- our layers.N.ln2): layer 1's second LayerNorm scaled in our copy."""
    spec = load_spec(SPECS / "gpt2.yaml")
    original = build_reference(spec, directory=tmp_path / "original")
    ours = _corrupt(original, tmp_path / "ours", "transformer.h.1.ln_2.weight", "scale")
    report = check_checkpoint(spec, ours, reference_dir=original)
    assert not verdict(report.results)[0]
    assert _first(report.diagnosis) == ("layers.1.ln2", "transformer.h.1.ln_2", 1)
    d = report.diagnosis
    assert d is not None and d.last_agreeing is not None and d.last_agreeing.layer == 1


def test_nan_weight_on_both_sides_is_located(tmp_path: Path) -> None:
    """A NaN in layer 2's down projection of the checkpoint both sides read."""
    spec = load_spec(SPECS / "llama.yaml")
    original = build_reference(spec, directory=tmp_path / "original")
    bad = _corrupt(original, tmp_path / "bad", "model.layers.2.mlp.down_proj.weight", "nan")
    report = check_checkpoint(spec, bad)
    d = report.diagnosis
    assert _first(d) == ("layers.2.mlp", "model.layers.2.mlp", 2)
    assert d is not None and d.first is not None and d.first.nonfinite == "both"


# --- no false alarm, pairing, verdict ----------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "qwen2_moe", "gpt_neox", "deepseek_v3"])
def test_correct_specs_show_no_diverging_module(name: str, tmp_path: Path) -> None:
    """Replaying a check on a correct spec compares every paired module and flags none."""
    spec = load_spec(SPECS / f"{name}.yaml")
    directory = build_reference(spec, directory=tmp_path / "m")
    compiled = compile_spec(spec, directory)
    model = load_model(compiled)
    hf = load_reference(directory, spec.spec.serves.architectures[0])
    vocab = int(hf.config.get_text_config().vocab_size)
    for check in (0, 3):  # prefill, and the decode steps through the paged KV cache
        d = diagnose_failure(compiled, model, lambda: ModelRunner(model, 256), hf, vocab, 0, check, 10.0)
        assert d is not None and d.first is None, d
        assert d.compared >= 3 * compiled.graph.num_layers  # at least norm, attention, mlp per layer


def test_pairing_follows_the_weight_rules_and_transformers_renames() -> None:
    """qwen2_moe: HF's `mlp` holds router, experts and shared expert, ours splits them, so the routed
    experts have no one-to-one HF module while the shared expert and its gate do; GPT-NeoX's
    checkpoint `embed_out` is transformers' `lm_head` since 5.x."""
    for name, want, unpaired in [
        (
            "qwen2_moe",
            {"layers.1.shared": "model.layers.1.mlp.shared_expert", "layers.0.mlp": "model.layers.0.mlp"},
            {"layers.1.moe", "layers.3.moe"},
        ),
        ("gpt_neox", {"lm_head": "lm_head", "layers.0.attn": "gpt_neox.layers.0.attention"}, set()),
    ]:
        spec = load_spec(SPECS / f"{name}.yaml")
        compiled = compile_spec(spec)
        import transformers
        from transformers import AutoConfig

        cfg = dict(spec.spec.example_config)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        with torch.device("meta"):
            hf = getattr(transformers, spec.spec.serves.architectures[0])(config)
        mmap = module_map(spec, compiled.graph, [n for n, _ in hf.named_modules()], key_renamer(hf))
        for ours, theirs in want.items():
            assert mmap.hf_of(ours) == theirs, (name, ours, mmap.hf_of(ours))
        assert set(mmap.unpaired) == unpaired


def test_verdict_is_relative_to_the_noise_floor() -> None:
    real = CheckResult("varlen", 3e-4, noise_floor=1e-4)  # the real model: 3e-4 vs tolerance 1e-4
    assert verdict([real]) == (True, 3e-4)  # within 10 x floor
    assert verdict([real], multiple=2.0)[0] is False  # 3e-4 > max(1e-4, 2e-4)
    assert verdict([CheckResult("x", 3e-4)])[0] is False  # no floor measured: the tolerance alone
    assert verdict([CheckResult("x", 5e-5, noise_floor=1e-9)])[0] is True  # tolerance still passes
    nan = CheckResult("decode", math.nan, "our logits hold 1 non-finite value(s)")
    assert verdict([real, nan])[0] is False
    assert first_failing([real, CheckResult("y", 2e-3, noise_floor=1e-4)], 1e-4, 10.0) == 1


def test_floor_is_measured_on_every_check() -> None:
    report = check_random_model(load_spec(SPECS / "mixtral.yaml"))  # float64 MoE runs the eager experts
    for r in report.results:
        assert r.noise_floor is not None and 0 < r.noise_floor < 1e-3, r
    assert report.diagnosis is None


def test_float64_in_place_gives_the_model_back_unchanged(tmp_path: Path) -> None:
    spec = load_spec(SPECS / "qwen3_moe.yaml")
    hf = load_reference(build_reference(spec, directory=tmp_path / "m"), spec.spec.serves.architectures[0])
    before = {n: p.clone() for n, p in hf.state_dict().items()}
    impl = hf.config._experts_implementation
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        logits = hf(ids).logits
    with as_float64(hf) as hf64:
        assert hf64 is hf and next(hf.parameters()).dtype == torch.float64
        with torch.inference_mode():
            assert hf64(ids).logits.dtype == torch.float64
    after = hf.state_dict()
    assert all(after[n].dtype == t.dtype and torch.equal(after[n], t) for n, t in before.items())
    assert hf.config._experts_implementation == impl
    with torch.inference_mode():
        assert torch.equal(hf(ids).logits, logits)


# --- command line ----------------------------------------------------------------------


def test_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _edit(
        SPECS / "llama.yaml",
        tmp_path / "llama.yaml",
        "attn_norm: {rmsnorm: {dim: hidden, eps: eps}}",
        "attn_norm: {rmsnorm: {dim: hidden, eps: 0.5}}",
    )
    assert main(["check", str(spec)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "tolerance 0.0001 or 10 x noise floor" in out[0]
    for line in out[1:5]:  # each check: ours, its floor and the bound they make, and the mark
        assert "max|Δlogit| = " in line and "noise floor " in line and "-> bound 1.0e-04" in line
        assert line.endswith("FAIL")
    assert out[5].startswith("FAIL max_abs_diff=")
    assert out[6].startswith(
        "first divergence, layer 0: ours `layers.0.attn_norm` <-> transformers `model.layers.0.input_layernorm`"
    )
    assert "max|Δ| = " in out[7] and "relative" in out[7]
    assert len(out) <= 10  # short

    assert main(["check", str(spec), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["pass"] is False and doc["tolerance"] == 1e-4 and doc["noise_multiple"] == 10.0
    assert [c["pass"] for c in doc["checks"]] == [False] * 4
    assert all(c["noise_floor"] > 0 for c in doc["checks"])
    first = doc["diagnosis"]["first"]
    assert (first["ours"], first["hf"], first["layer"]) == ("layers.0.attn_norm", "model.layers.0.input_layernorm", 0)
    assert first["max_abs_diff"] > 0 and first["relative"] > 0 and first["noise_floor"] >= 0


def test_cli_json_on_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SPECS / "qwen3.yaml"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pass"] is True and doc["diagnosis"] is None
    assert all(c["max_abs_diff"] <= c["allowed"] for c in doc["checks"])


def test_cli_rejects_a_bad_noise_multiple(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SPECS / "llama.yaml"), "--noise-multiple", "nan"]) != 0
    assert "--noise-multiple nan" in capsys.readouterr().err
