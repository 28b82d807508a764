"""Spec-language features for new families: `extends:`, `requires:` in find_spec, overlap
reports in `validate`, and the `longrope` rope type against transformers' own frequencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minisgl_decl.config.resolve import resolve_config
from minisgl_decl.errors import SpecError, UserError
from minisgl_decl.spec.find import find_spec, overlapping_specs
from minisgl_decl.spec.load import load_spec
from minisgl_decl.validate import validate_file

SPECS = Path(__file__).resolve().parent.parent / "specs"
ROOT = SPECS.parent


def _line_col(path: Path, line_has: str, token: str) -> tuple[int, int]:
    lines = path.read_text().splitlines()
    (i,) = [k for k, text in enumerate(lines) if line_has in text]
    return i + 1, lines[i].index(token) + 1


# --- extends ---------------------------------------------------------------------------------

PARENT = """\
spec_version: 1
name: base
serves: {architectures: [LlamaForCausalLM], model_types: [llama]}
config:
  hidden: {from: hidden_size, type: int}
  eps: {from: rms_norm_eps, default: 1.0e-6}
  extra: {value: 3}
model:
  modules:
    norm: {rmsnorm: {dim: hidden, eps: eps}}
  layers:
    repeat: 1
    modules:
      n1: {rmsnorm: {dim: hidden, eps: eps}}
    body: [x = n1(x)]
  forward: [x = norm(tokens)]
weights:
  params: {norm.weight: model.norm.weight}
  ignore: [a, b]
"""


def test_extends_merges_mappings_replaces_lists_and_deletes_with_null(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(PARENT)
    child = tmp_path / "child.yaml"
    child.write_text(
        "extends: base\nname: child\nconfig:\n  extra: null\n  eps: {from: eps2, default: 0.5}\n"
        "model:\n  modules:\n    norm: {rmsnorm: {eps: 1.0e-3}}\nweights:\n  ignore: [c]\n"
    )
    spec = load_spec(child).spec
    assert spec.name == "child" and spec.extends == "base"
    assert "extra" not in spec.config  # deleted by null
    assert spec.config["eps"].from_ == "eps2" and "hidden" in spec.config  # merged key by key
    assert spec.model.modules["norm"] == {"rmsnorm": {"dim": "hidden", "eps": 1.0e-3}}  # deep merge
    assert spec.weights.ignore == ["c"]  # lists replace
    assert spec.model.layers.body == ["x = n1(x)"]  # inherited


def test_errors_point_at_the_file_that_set_the_value(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        PARENT.replace("n1: {rmsnorm: {dim: hidden, eps: eps}}", "n1: {rmsnrom: {dim: hidden, eps: eps}}")
    )
    child = tmp_path / "child.yaml"
    child.write_text("extends: base\nname: child\nmodel:\n  modules:\n    norm: {rmsnorm: {bogus: 1}}\n")
    problems = validate_file(child)
    where = {(p.location.file, p.location.line, p.location.column): p.message for p in problems}
    parent_pos = _line_col(tmp_path / "base.yaml", "n1: {rmsnrom", "rmsnrom")
    child_pos = _line_col(child, "bogus", "bogus")
    assert any(
        f.endswith("base.yaml") and (ln, c) == parent_pos and "unknown layer `rmsnrom`" in m
        for (f, ln, c), m in where.items()
    ), where
    assert any(f == str(child) and (ln, c) == child_pos and "bogus" in m for (f, ln, c), m in where.items()), where


def test_extends_cycles_and_missing_parents_are_located(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b\nname: a\n")
    b.write_text("name: b\nextends: a\n")
    with pytest.raises(SpecError) as exc:
        load_spec(a)
    (p,) = exc.value.problems
    assert "goes round in a circle: a.yaml -> b.yaml -> a.yaml" in p.message
    assert (p.location.file, p.location.line) == (str(b), 2)
    a.write_text("name: a\nextends: nowhere\n")
    with pytest.raises(SpecError) as exc:
        load_spec(a)
    assert "`extends: nowhere`: no spec at" in exc.value.problems[0].message
    assert exc.value.problems[0].location.line == 2


@pytest.mark.parametrize(
    ("name", "parent"),
    [
        ("qwen2", "llama"),
        ("qwen3", "llama"),
        ("mistral", "llama"),
        ("granite", "llama"),
        ("phi3", "llama"),
        ("gemma", "llama"),
        ("smollm3", "llama"),
        ("olmo2", "llama"),
        ("qwen2_moe", "qwen2"),
        ("olmoe", "qwen3_moe"),
        ("gpt_oss", "llama"),
        ("mixtral", "mistral"),
    ],
)
def test_specs_written_with_extends_resolve_to_complete_specs(name: str, parent: str) -> None:
    spec = load_spec(SPECS / f"{name}.yaml").spec
    assert spec.extends == parent and spec.name == name
    archs = spec.example_config["architectures"]
    assert archs == spec.serves.architectures and "LlamaForCausalLM" not in archs
    assert validate_file(SPECS / f"{name}.yaml") == []
    resolve_config(load_spec(SPECS / f"{name}.yaml"), spec.example_config)  # no llama leftovers break it


# --- find_spec and requires ------------------------------------------------------------------


def _pair(tmp_path: Path, req_a: str, req_b: str, vocab_a: int = 211) -> None:
    text = (SPECS / "llama.yaml").read_text()
    for name, req in (("one", req_a), ("two", req_b)):
        body = text.replace("name: llama", f"name: {name}")
        if name == "one":
            body = body.replace("vocab_size: 211", f"vocab_size: {vocab_a}")
        body = body.replace("\nweights:", f'\nrequires:\n  - "{req}"\n\nweights:')
        (tmp_path / f"{name}.yaml").write_text(body)


def test_find_spec_honours_requires(tmp_path: Path) -> None:
    _pair(tmp_path, "vocab > 1000", "vocab <= 1000")
    base = {"architectures": ["LlamaForCausalLM"]}
    assert find_spec({**base, "vocab_size": 211}, [tmp_path]).spec.name == "two"
    assert find_spec({**base, "vocab_size": 5000}, [tmp_path]).spec.name == "one"
    with pytest.raises(UserError) as exc:
        find_spec(base, [tmp_path])  # vocab_size missing: neither can say it serves it
    assert "requires:" in str(exc.value) and "vocab_size" in str(exc.value)


def test_find_spec_names_broken_specs(tmp_path: Path) -> None:
    shutil.copy(SPECS / "llama.yaml", tmp_path / "llama.yaml")
    (tmp_path / "broken.yaml").write_text("spec_version: 1\nname: broken\nserves: {architectures: [X]}\n")
    with pytest.raises(UserError) as exc:
        find_spec({"architectures": ["GPT2LMHeadModel"]}, [tmp_path])
    msg = str(exc.value)
    assert "1 spec(s) could not be loaded" in msg and "broken.yaml:1:1" in msg and "missing required key" in msg
    assert find_spec({"architectures": ["LlamaForCausalLM"]}, [tmp_path]).spec.name == "llama"


def test_overlapping_specs_are_reported(tmp_path: Path) -> None:
    _pair(tmp_path, "vocab > 100", "vocab < 1000")  # both hold for the example's vocab 211
    specs = [load_spec(tmp_path / "one.yaml"), load_spec(tmp_path / "two.yaml")]
    (found,) = overlapping_specs(specs)
    assert "could both serve LlamaForCausalLM" in found[2]
    p = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "validate", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1 and "could both serve" in p.stdout and "1 overlapping pair(s)" in p.stdout
    _pair(tmp_path, "vocab > 1000", "vocab <= 1000", vocab_a=5000)  # disjoint: no report
    assert overlapping_specs([load_spec(tmp_path / "one.yaml"), load_spec(tmp_path / "two.yaml")]) == []


def test_shipped_specs_do_not_overlap() -> None:
    specs = [load_spec(p) for p in sorted(SPECS.glob("*.yaml"))]
    assert overlapping_specs(specs) == []


# --- longrope --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pos", [256, 1024])  # == original: short factors; > original: long factors
def test_longrope_frequencies_match_transformers(max_pos: int) -> None:
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from minisgl_decl.catalogue.rotary import rope_frequencies

    short = [1.0, 1.3, 1.9, 2.6, 3.1, 4.2, 5.0, 6.0]
    long = [1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0]
    hf = {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "vocab_size": 50,
        "max_position_embeddings": max_pos,
        "original_max_position_embeddings": 256,
        "pad_token_id": 0,
        "rope_parameters": {"rope_type": "longrope", "rope_theta": 5000.0, "short_factor": short, "long_factor": long},
    }
    rope = resolve_config(load_spec(SPECS / "phi3.yaml"), hf)["rope"]
    inv_freq, scaling, dim = rope_frequencies(rope, 16)
    cfg = Phi3Config(**{k: v for k, v in hf.items() if k not in ("architectures", "model_type")})
    # transformers switches to the long factors once the sequence passes the original length
    ref_freq, ref_scaling = ROPE_INIT_FUNCTIONS["longrope"](cfg, "cpu", seq_len=257 if max_pos > 256 else None)
    assert dim == 16
    assert torch.equal(inv_freq, ref_freq)
    assert scaling == pytest.approx(ref_scaling, rel=1e-12)
    assert (scaling > 1.0) == (max_pos > 256)


def test_longrope_needs_its_factors() -> None:
    hf = {
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "vocab_size": 50,
        "rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 8},
    }
    with pytest.raises(SpecError) as exc:
        resolve_config(load_spec(SPECS / "phi3.yaml"), hf)
    assert "rope type `longrope` needs `long_factor`" in str(exc.value)


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_is_found_for_its_own_example(path: Path) -> None:
    spec = load_spec(path)
    assert find_spec(spec.spec.example_config, [SPECS]).file == str(path)
