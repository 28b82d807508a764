"""Expert-stacked weights: the spec syntax, its validation, the plan per rank, and `requires:`."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import SPECS
from safetensors import safe_open

from minisgl_decl.errors import SpecError
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.plan.checkpoint import CheckpointError
from minisgl_decl.spec.compile import load_ir
from minisgl_decl.spec.load import load_spec_text
from minisgl_decl.validate import check_loaded


@pytest.fixture(scope="module")
def moe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("moe")
    build_reference(load_ir(SPECS / "qwen3_moe.yaml"), directory=d)
    return d


def test_plan_stacks_every_expert_and_shards_its_ffn(moe_ckpt: Path) -> None:
    compiled = compile_spec(SPECS / "qwen3_moe.yaml", moe_ckpt, tp=2)
    assert compiled.plan is not None
    e, ffn, hidden = 6, 40, 64  # from the spec's example_config
    for rank in compiled.plan.ranks:
        gate_up = next(p for p in rank.params if p.name == "layers.1.moe.gate_up")
        assert gate_up.shape == (e, 2 * ffn // 2, hidden)
        by_expert: dict[int, list] = {}
        for r in gate_up.reads:
            assert r.dst[0][1] - r.dst[0][0] == 1
            by_expert.setdefault(r.dst[0][0], []).append(r)
        assert sorted(by_expert) == list(range(e))
        for idx, reads in by_expert.items():
            keys = [r.key for r in reads]
            assert keys == [
                f"model.layers.1.mlp.experts.{idx}.gate_proj.weight",
                f"model.layers.1.mlp.experts.{idx}.up_proj.weight",
            ]
            half = ffn // 2
            assert [r.src[0] for r in reads] == [(rank.rank * half, rank.rank * half + half)] * 2
            assert [r.dst[1] for r in reads] == [(0, half), (half, ffn)]
        down = next(p for p in rank.params if p.name == "layers.0.moe.down")
        assert down.shape == (e, hidden, ffn // 2)
        assert {r.src[1] for r in down.reads} == {(rank.rank * 20, rank.rank * 20 + 20)}


def test_missing_expert_tensor_is_named(moe_ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "config.json").write_text((moe_ckpt / "config.json").read_text())
    with safe_open(str(moe_ckpt / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "model.layers.0.mlp.experts.3.up_proj.weight"}  # noqa: SIM118
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError) as exc:
        compile_spec(SPECS / "qwen3_moe.yaml", out)
    (problem,) = exc.value.problems
    assert "missing tensor `model.layers.0.mlp.experts.3.up_proj.weight`" in problem
    assert "layers.0.moe.gate_up" in problem and "qwen3_moe.yaml" in problem


def test_expert_index_needs_experts_count() -> None:
    text = (SPECS / "qwen3_moe.yaml").read_text().replace("      experts: experts\n      from:", "      from:")
    problems = check_loaded(load_spec_text(text, "moe.yaml"))
    assert any("`{e}` (expert index) goes with `experts:`" in p.message for p in problems)
    line = text.splitlines().index("    layers.{i}.moe.down:") + 1
    assert any(p.location.line == line for p in problems)


def test_requires_refuses_checkpoints_the_spec_cannot_serve() -> None:
    spec = load_ir(SPECS / "qwen3_moe.yaml")
    cfg = {**spec.example_config, "mlp_only_layers": [1]}
    with pytest.raises(SpecError) as exc:
        compile_spec(spec, hf_config=cfg)
    (problem,) = exc.value.problems
    assert "not supported by the spec" in problem.message and "mlp_only_layers=[1]" in problem.message
    lines = (SPECS / "qwen3_moe.yaml").read_text().splitlines()
    assert problem.location.line == lines.index("requires:") + 2
