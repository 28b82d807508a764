"""Issue 11, class "unsafe or silently wrong": each case must now fail clearly (or warn), never pass silently."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minisgl_decl.cli.main import main
from minisgl_decl.codegen.render import render_module
from minisgl_decl.errors import SpecError
from minisgl_decl.parity.check import CheckResult, run_parity_checks, verdict
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.plan.checkpoint import CheckpointError, scan_checkpoint
from minisgl_decl.runtime.runner import ModelRunner
from minisgl_decl.spec.compile import load_ir
from minisgl_decl.spec.load import load_spec_text
from minisgl_decl.validate import check_loaded

SPECS = Path(__file__).resolve().parent.parent / "specs"
LLAMA = SPECS / "llama.yaml"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("good")
    build_reference(load_ir(LLAMA), directory=d)
    return d


def _copy_config(good: Path, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text((good / "config.json").read_text())
    return d


def _index(d: Path, shard: str, good: Path) -> None:
    keys = load_file(str(good / "model.safetensors")).keys()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))


@pytest.mark.parametrize(
    "shard", ["../other/model.safetensors", "/etc/passwd", "/proc/self/environ", "sub/../../x.safetensors"]
)
def test_index_shard_outside_directory_is_refused(good: Path, tmp_path: Path, shard: str) -> None:
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(good / "model.safetensors", other / "model.safetensors")
    d = _copy_config(good, tmp_path / "ckpt")
    _index(d, shard, good)
    with pytest.raises(CheckpointError) as exc:
        scan_checkpoint(d)
    assert "outside the checkpoint directory" in str(exc.value)
    assert "root" not in str(exc.value) and "length" not in str(exc.value)


def test_symlinked_shards_inside_the_directory_still_load(good: Path, tmp_path: Path) -> None:
    """The Hugging Face cache layout: snapshots/<rev>/model.safetensors -> ../../blobs/<hash>."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "abc123").write_bytes((good / "model.safetensors").read_bytes())
    snap = _copy_config(good, tmp_path / "snapshots" / "rev")
    os.symlink("../../blobs/abc123", snap / "model.safetensors")
    _index(snap, "model.safetensors", good)
    assert len(scan_checkpoint(snap).tensors) == len(load_file(str(good / "model.safetensors")))


def test_a_non_safetensors_shard_is_not_echoed(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy_config(good, tmp_path / "ckpt")
    secret = b"root:x:0:0:root:/root:/bin/bash\n" * 4
    (d / "model.safetensors").write_bytes(secret)
    assert main(["compile", str(LLAMA), "--model", str(d)]) == 1
    err = capsys.readouterr().err
    assert "not a safetensors file" in err
    assert str(struct.unpack("<Q", secret[:8])[0]) not in err and "root" not in err


def _write_raw(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _raw_case(good: Path, tmp_path: Path, offsets: list[list[int]]) -> str:
    d = _copy_config(good, tmp_path / "ckpt")
    header = {f"t{k}": {"dtype": "F32", "shape": [2], "data_offsets": o} for k, o in enumerate(offsets)}
    _write_raw(d / "model.safetensors", header, bytes(16))
    with pytest.raises(CheckpointError) as exc:
        scan_checkpoint(d)
    return str(exc.value)


@pytest.mark.parametrize(
    ("offsets", "needle"),
    [
        ([[-8, 0], [0, 8]], "need 0 <= begin <= end"),
        ([[0, 8], [4, 12]], "overlap"),
        ([[8, 16], [8, 16]], "overlap"),
        ([[0, 8], [16, 24]], "ends at byte 24"),
        ([[8, 16], [0, 8], [16, 16]], "needs 8 bytes"),  # zero-size entry with a non-empty shape
        ([[0, 8]], "trailing bytes"),
        ([[8, 16]], "gap before tensor `t0`"),
    ],
)
def test_header_layout_is_validated_before_reading(
    good: Path, tmp_path: Path, offsets: list[list[int]], needle: str
) -> None:
    assert needle in _raw_case(good, tmp_path, offsets)


def test_out_of_order_but_tiling_offsets_are_fine(good: Path, tmp_path: Path) -> None:
    d = _copy_config(good, tmp_path / "ckpt")
    header = {
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    }
    _write_raw(d / "model.safetensors", header, bytes(16))
    idx = scan_checkpoint(d)
    assert idx.tensors["a"].offset < idx.tensors["b"].offset


def test_nan_anywhere_fails_check_and_says_where() -> None:
    finite = CheckResult("prefill", 2.7e-6)
    bad = CheckResult("decode", math.nan, "our logits hold 1 non-finite value(s)")
    assert verdict([finite]) == (True, 2.7e-6)
    ok, worst = verdict([bad, finite])
    assert not ok and math.isnan(worst)
    ok, worst = verdict([finite, bad])  # NaN after a number: Python's max() would have dropped it
    assert not ok and math.isnan(worst)


def test_check_fails_on_nan_logits_on_both_sides(
    good: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "nan"
    d.mkdir()
    for f in good.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(d / "model.safetensors"))
    tensors["model.layers.2.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="minisgl_decl.load"):
        code = main(["check", str(LLAMA), "--model", str(d)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL max_abs_diff=nan: non-finite logits:" in out
    assert "0.000e+00" not in out  # the decode line used to print 0 for NaN diffs
    assert "token" in out and "vocab id" in out
    assert any("layers.2.mlp.down.weight" in r.getMessage() for r in caplog.records)


def test_decode_nan_is_not_reported_as_zero() -> None:
    calls = {"n": 0}

    class Runner:
        def extend(self, batch: dict, all_logits: bool = False) -> list[torch.Tensor]:
            return [
                torch.zeros(len(t) if all_logits else 1, 5).squeeze(0) if not all_logits else torch.zeros(len(t), 5)
                for t in batch.values()
            ]

        def decode(self, batch: dict) -> list[torch.Tensor]:
            calls["n"] += 1
            out = torch.zeros(5)
            if calls["n"] == 4:
                out[2] = float("inf")
            return [out for _ in batch]

    results = run_parity_checks(Runner, lambda ids: torch.zeros(len(ids), 5), vocab=5)  # type: ignore[arg-type]
    decode = results[-1]
    assert math.isnan(decode.max_abs_diff)
    assert decode.nonfinite is not None and "decode step 3" in decode.nonfinite and "vocab id 2" in decode.nonfinite


BODY_OK = """      - h = attn(attn_norm(x))
      - x = x + h
      - h = mlp(mlp_norm(x))
      - x = x + h"""


def _llama_with(old: str, new: str) -> str:
    text = LLAMA.read_text()
    assert old in text
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("- h = attn(attn_norm(x))", "- h = attn(attn(attn_norm(x)))", "`attn` owns a KV cache"),
        ("- h = mlp(mlp_norm(x))", "- h = mlp(attn(x))", "`attn` owns a KV cache"),
        ("- x = layers(x)", "- x = layers(layers(x))", "`layers` runs every layer's KV cache"),
    ],
)
def test_kv_module_called_twice_is_rejected_with_a_location(old: str, new: str, needle: str) -> None:
    text = _llama_with(old, new)
    problems = check_loaded(load_spec_text(text, "s.yaml"))
    line = next(n for n, ln in enumerate(text.splitlines(), 1) if new in ln)
    hits = [p for p in problems if needle in p.message]
    assert hits and hits[0].location.line == line, problems


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("- x = x + h\n      - h = mlp", "- x = x + h / 0\n      - h = mlp", "division by zero"),
        ("- x = x + h\n      - h = mlp", "- x = 3\n      - h = mlp", "assigns a constant"),
        ("- x = x + h\n      - h = mlp", "- x = 'abc'\n      - h = mlp", "assigns a constant"),
        ("- x = x + h\n      - h = mlp", "- x = x * 'abc'\n      - h = mlp", "not a number"),
        ("- h = attn(attn_norm(x))", "- h = attn(attn_norm(x), x)", "exactly one tensor argument, got 2"),
        ("- h = attn(attn_norm(x))", "- h = attn()", "exactly one tensor argument, got 0"),
        ("- h = attn(attn_norm(x))", "- h = attn(3)", "takes a tensor, got the constant"),
        ("- x = layers(x)", "- x = layers(x, x)", "exactly one tensor argument"),
        ("- x = layers(x)", "- x = layers(hidden)", "takes a tensor"),
    ],
)
def test_bad_statements_are_located(old: str, new: str, needle: str) -> None:
    text = _llama_with(old, new)
    problems = check_loaded(load_spec_text(text, "s.yaml"))
    first_new = new.splitlines()[0]
    line = next(n for n, ln in enumerate(text.splitlines(), 1) if first_new in ln)
    assert any(needle in p.message and p.location.line == line for p in problems), problems


def test_generated_module_runs_with_inf_constants(good: Path, tmp_path: Path) -> None:
    text = _llama_with("- logits = lm_head(norm(x))", "- logits = lm_head(norm(x)) * 1e400")
    spec = load_spec_text(text, str(tmp_path / "inf.yaml"))
    assert check_loaded(spec) == []
    compiled = compile_spec(spec, good)
    assert "float('inf')" in render_module(compiled.graph, "inf.yaml").source
    model = load_model(compiled)  # used to raise NameError: name 'inf' is not defined
    ran = ModelRunner(model, 64).extend({0: [3, 5, 7, 9]}, all_logits=True)[0]
    assert torch.isinf(ran).any()


def test_nan_constant_in_a_statement_is_rejected() -> None:
    text = _llama_with("- logits = lm_head(norm(x))", "- logits = lm_head(norm(x)) * (1e400 - 1e400)")
    with pytest.raises(SpecError) as exc:
        spec = load_spec_text(text, "s.yaml")
        problems = check_loaded(spec)
        if problems:
            raise SpecError(problems)
    assert "is NaN" in str(exc.value)
