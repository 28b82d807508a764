"""The error corpus: every broken checkpoint gives one clear message, before anything is allocated.

Each case breaks a good tiny Llama checkpoint in one way and runs the real CLI
(`compile` and `check`) with every allocation and read of tensor data booby-trapped:
the check must stop it first with exit code 1, naming the tensor, the spec rule
(file:line) and what was expected against what was found.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _helpers import SPECS
from safetensors.torch import load_file, save_file

from minisgl_decl.cli.main import main
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.plan.checkpoint import CheckpointError
from minisgl_decl.spec.compile import load_ir

LLAMA = str(SPECS / "llama.yaml")
Q = "model.layers.1.self_attn.q_proj.weight"
K = "model.layers.1.self_attn.k_proj.weight"
QKV = "layers.{i}.attn.qkv.weight"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("good")
    build_reference(load_ir(LLAMA), directory=d)
    return d


def _rule_line(target: str) -> str:
    """`llama.yaml:N` of the weight rule for runtime parameter pattern `target`."""
    for n, line in enumerate(Path(LLAMA).read_text().splitlines(), 1):
        if line.strip().startswith(target + ":"):
            return f"llama.yaml:{n}"
    raise AssertionError(target)


def _edit(good: Path, tmp: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    d = tmp / "ckpt"
    shutil.copytree(good, d)
    tensors = load_file(str(d / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.fixture
def no_alloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allocating a parameter or reading tensor data before the check passed is a bug."""

    def trap(*_a: object, **_k: object) -> None:
        raise AssertionError("allocated or read tensor data before the checkpoint was checked")

    from minisgl_decl.plan import execute
    from minisgl_decl.runtime import model

    monkeypatch.setattr(execute, "materialise", trap)
    monkeypatch.setattr(execute._Files, "read_into", trap)
    monkeypatch.setattr(model.CompiledModel, "__init__", trap)
    monkeypatch.setattr("safetensors.safe_open", trap)
    monkeypatch.setattr("safetensors.torch.load_file", trap)


def _cli_fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in err, f"{n!r} not in:\n{err}"
    return err


def _missing(t: dict[str, torch.Tensor]) -> None:
    del t[K]


def _extra(t: dict[str, torch.Tensor]) -> None:
    t["model.layers.0.self_attn.rotary_emb.cos_cached"] = torch.zeros(3)


def _shape(t: dict[str, torch.Tensor]) -> None:
    t[K] = torch.zeros(33, 128)


def _dtype(t: dict[str, torch.Tensor]) -> None:
    t[Q] = t[Q].to(torch.int32)


CASES: list[tuple[str, Callable[[dict[str, torch.Tensor]], None], list[str]]] = [
    ("missing", _missing, [f"missing tensor `{K}`", _rule_line(QKV), "expected shape [64, 128]", "found no such"]),
    (
        "extra",
        _extra,
        [
            "unexpected tensor `model.layers.0.self_attn.rotary_emb.cos_cached`",
            "llama.yaml:",
            "weights.ignore",
            "found neither",
        ],
    ),
    ("shape", _shape, [f"wrong shape for `{K}`", _rule_line(QKV), "expected [64, 128]", "found [33, 128]"]),
    ("dtype", _dtype, [f"wrong dtype for `{Q}`", _rule_line(QKV), "expected a floating type", "found I32"]),
]


@pytest.mark.parametrize(("what", "change", "needles"), CASES, ids=[c[0] for c in CASES])
def test_broken_tensor(
    good: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    no_alloc: None,
    what: str,
    change: Callable[[dict[str, torch.Tensor]], None],
    needles: list[str],
) -> None:
    d = _edit(good, tmp_path, change)
    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_ir(LLAMA), d, 2)
    assert len(exc.value.problems) == 1, exc.value.problems  # one clear message
    _cli_fails(["compile", LLAMA, "--model", str(d), "--tp", "2"], capsys, *needles)
    _cli_fails(["check", LLAMA, "--model", str(d)], capsys, *needles)


def test_all_problems_at_once(good: Path, tmp_path: Path) -> None:
    def many(t: dict[str, torch.Tensor]) -> None:
        _missing(t)
        _extra(t)
        _dtype(t)
        t["model.layers.2.mlp.up_proj.weight"] = torch.zeros(136, 127)

    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_ir(LLAMA), _edit(good, tmp_path, many), 1)
    text = "\n".join(exc.value.problems)
    assert len(exc.value.problems) == 4, text
    for needle in ("missing tensor", "unexpected tensor", "wrong dtype", "model.layers.2.mlp.up_proj.weight"):
        assert needle in text


def _sharded(good: Path, tmp: Path) -> Path:
    d = tmp / "sharded"
    shutil.copytree(good, d)
    tensors = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(d / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def test_index_names_a_missing_shard(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_alloc: None
) -> None:
    d = _sharded(good, tmp_path)
    assert compile_spec(load_ir(LLAMA), d, 2).plan is not None  # the sharded copy itself is fine
    (d / "model-00002-of-00002.safetensors").unlink()
    _cli_fails(
        ["compile", LLAMA, "--model", str(d)],
        capsys,
        "model.safetensors.index.json names shard `model-00002-of-00002.safetensors`",
        "found no such file",
    )


@pytest.mark.parametrize("how", ["truncated", "corrupt header", "header length"])
def test_truncated_or_corrupt_file(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_alloc: None, how: str
) -> None:
    d = tmp_path / "ckpt"
    shutil.copytree(good, d)
    f = d / "model.safetensors"
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) - 1000])
        needles = ["model.safetensors: truncated: tensor `", "ends at byte"]
    elif how == "corrupt header":
        f.write_bytes(data[:8] + b"#" * 40 + data[48:])
        needles = ["model.safetensors: corrupt safetensors header (not JSON)"]
    else:
        f.write_bytes((10**12).to_bytes(8, "little") + data[8:])
        needles = ["model.safetensors: not a safetensors file (its header length field does not fit"]
    _cli_fails(["compile", LLAMA, "--model", str(d)], capsys, *needles)
    _cli_fails(["check", LLAMA, "--model", str(d), "--tp", "2"], capsys, *needles)  # before any rank starts


def test_tp_not_compatible_with_heads(good: Path, capsys: pytest.CaptureFixture[str], no_alloc: None) -> None:
    needles = ["llama.yaml:", "layers.0.attn.qkv.weight: tp=3 does not divide q heads (8)"]
    _cli_fails(["compile", LLAMA, "--model", str(good), "--tp", "3"], capsys, *needles)
    _cli_fails(["check", LLAMA, "--tp", "3"], capsys, *needles)
    _cli_fails(["check", LLAMA, "--tp", "16"], capsys, "tp=16 does not divide q heads (8)")


def test_tied_embeddings_follow_the_checkpoint(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # untied config, checkpoint without lm_head.weight: an error that says why
    d = _edit(good, tmp_path, lambda t: t.pop("lm_head.weight"))
    _cli_fails(
        ["compile", LLAMA, "--model", str(d)],
        capsys,
        "missing tensor `lm_head.weight`",
        "tied_if: 'tied' is false",
        _rule_line("lm_head.weight"),
    )
    # tied config, checkpoint still holding lm_head.weight: the embedding is used, with a warning
    cfg = json.loads((good / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    shutil.copy(good / "model.safetensors", d / "model.safetensors")
    c = compile_spec(load_ir(LLAMA), d, 2)
    assert c.plan is not None
    lm = next(p for p in c.plan.ranks[1].params if p.name == "lm_head.weight")
    assert {r.key for r in lm.reads} == {"model.embed_tokens.weight"}
    assert any("`lm_head.weight` is in the checkpoint but the config ties" in w for w in c.plan.warnings)
