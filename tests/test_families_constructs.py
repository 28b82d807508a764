"""Spec-language constructs for new families: modules that exist only when a config
expression holds (`if:`), statements that choose a branch per layer (`a if c else b`),
and the `layout:` re-layout of checkpoint rows (strided reads of this rank's rows only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import SPECS

from minisgl_decl.config.resolve import resolve_config
from minisgl_decl.errors import SpecError
from minisgl_decl.graph.build import ModelGraph, build_graph
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.plan.checkpoint import CheckpointError
from minisgl_decl.plan.relayout import _source_index
from minisgl_decl.spec.compile import compile_loaded, load_ir
from minisgl_decl.spec.load import load_spec, load_spec_text
from minisgl_decl.spec.loaded import LoadedSpec
from minisgl_decl.validate import check_loaded


def _graph(name: str, **overrides: object) -> ModelGraph:
    spec = load_ir(SPECS / f"{name}.yaml")
    return build_graph(spec, resolve_config(spec, {**spec.example_config, **overrides}))


def _calls(graph: ModelGraph) -> list[str]:
    return [op.module for op in graph.program if op.module is not None]


def test_module_if_decides_which_modules_exist() -> None:
    seq = _graph("stablelm", use_parallel_residual=False)
    par = _graph("stablelm", use_parallel_residual=True)
    assert "layers.1.mlp_norm" in {m.path for m in seq.modules}
    assert not any(m.path.endswith("mlp_norm") for m in par.modules)
    assert not any(n.endswith("mlp_norm.weight") for n, _, _ in par.parameters)
    assert "layers.1.mlp_norm" in _calls(seq) and not any(c.endswith("mlp_norm") for c in _calls(par))


def test_per_layer_choice_between_dense_and_routed() -> None:
    graph = _graph("qwen2_moe")  # layer 0 in mlp_only_layers, sparse step 2: layers 1 and 3 routed
    paths = {m.path for m in graph.modules}
    for i in range(4):
        routed = i in (1, 3)
        assert (f"layers.{i}.moe" in paths) == routed and (f"layers.{i}.mlp" in paths) != routed
        assert (f"layers.{i}.shared_gate" in paths) == routed
    calls = _calls(graph)
    assert "layers.1.moe" in calls and "layers.1.shared" in calls and "layers.1.mlp" not in calls
    assert "layers.2.mlp" in calls and "layers.2.moe" not in calls


BASE = """\
spec_version: 1
name: t
serves: {architectures: [LlamaForCausalLM]}
config:
  hidden: {from: hidden_size, type: int}
  vocab: {from: vocab_size, type: int}
  extra: {from: extra_norm, default: false}
model:
  modules:
    embed: {embedding: {vocab: vocab, dim: hidden}}
    lm_head: {lm_head: {vocab: vocab, dim: hidden}}
  layers:
    repeat: 2
    modules:
      n1: {rmsnorm: {dim: hidden}}
      n2: {if: "extra and i == 1", rmsnorm: {dim: hidden}}
    body:
BODY
  forward: [x = embed(tokens), x = layers(x), logits = lm_head(x)]
weights:
  params:
    embed.weight: e
    lm_head.weight: l
    layers.{i}.n1.weight: a.{i}
    layers.{i}.n2.weight: b.{i}
example_config: {architectures: [LlamaForCausalLM], hidden_size: 8, vocab_size: 11, extra_norm: true}
"""


def _spec(body: str, tmp_path: Path) -> tuple[LoadedSpec, Path]:
    path = tmp_path / "t.yaml"
    path.write_text(BASE.replace("BODY", body))
    return load_spec(path), path


def test_calling_a_module_its_if_left_out_is_a_located_error(tmp_path: Path) -> None:
    loaded, path = _spec("      - x = n2(n1(x))", tmp_path)
    spec = compile_loaded(loaded)
    with pytest.raises(SpecError) as exc:
        build_graph(spec, resolve_config(spec, spec.example_config))
    (p,) = exc.value.problems
    lines = path.read_text().splitlines()
    line = next(k for k, t in enumerate(lines) if "n2: {if:" in t)
    assert (p.location.line, p.location.column) == (line + 1, lines[line].index('"extra') + 1)
    assert "module `n2` does not exist in layer 0" in p.message and "if <condition> else" in p.message


def test_a_guarded_call_builds_and_picks_the_branch_per_layer(tmp_path: Path) -> None:
    loaded, _ = _spec("      - x = n2(n1(x)) if extra and i == 1 else n1(x)", tmp_path)
    assert check_loaded(loaded) == []
    spec = compile_loaded(loaded)
    graph = build_graph(spec, resolve_config(spec, spec.example_config))
    assert [c for c in _calls(graph) if c.startswith("layers")] == ["layers.0.n1", "layers.1.n1", "layers.1.n2"]
    graph = build_graph(spec, resolve_config(spec, {**spec.example_config, "extra_norm": False}))
    assert [c for c in _calls(graph) if c.startswith("layers")] == ["layers.0.n1", "layers.1.n1"]


def test_condition_must_be_a_config_expression(tmp_path: Path) -> None:
    spec, path = _spec("      - h = n1(x)\n      - x = n1(x) if h else x", tmp_path)
    problems = check_loaded(spec)
    assert len(problems) == 1 and "is a config expression, not a tensor" in problems[0].message
    lines = path.read_text().splitlines()
    line = next(k for k, t in enumerate(lines) if "if h else" in t)
    assert (problems[0].location.line, problems[0].location.column) == (line + 1, lines[line].index("h else") + 1)


def test_if_expressions_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(BASE.replace("BODY", "      - x = n1(x)").replace('"extra and i == 1"', '"extar"'))
    problems = check_loaded(load_spec(path))
    assert any("`n2.if`: undefined config name `extar`" in p.message for p in problems)
    with pytest.raises(SpecError) as exc:
        load_spec_text(
            BASE.replace("BODY", "      - x = n1(x)").replace('if: "extra and i == 1"', "if: [1]"),
            str(tmp_path / "u.yaml"),
        )
    assert "`if:` is an expression" in str(exc.value)


# --- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "order"), [((4, 3, 5), (1, 0, 2)), ((2, 3, 2), (0, 2, 1)), ((6, 2), (1, 0))])
def test_source_index_is_torch_permute(split: tuple[int, ...], order: tuple[int, ...]) -> None:
    n = 1
    for s in split:
        n *= s
    expected = torch.arange(n).reshape(split).permute(order).reshape(-1).tolist()
    assert [_source_index(t, split, order) for t in range(n)] == expected


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_per_head_fused_qkv_reads_only_this_ranks_rows(tp: int, tmp_path: Path) -> None:
    spec = load_ir(SPECS / "gpt_neox.yaml")
    model = build_reference(spec, directory=tmp_path)
    plan = compile_spec(spec, model, tp=tp).plan
    heads, hd = 8, 16
    regrouped = torch.arange(heads * 3 * hd).reshape(heads, 3, hd).permute(1, 0, 2)  # [3, heads, hd] source rows
    local = heads // tp
    for rank in plan.ranks:
        (param,) = [p for p in rank.params if p.name == "layers.1.attn.qkv.weight"]
        got: dict[int, int] = {}
        for r in param.reads:
            assert r.src[1] == (0, 128)  # whole rows, no column slicing
            for k in range(r.src[0][1] - r.src[0][0]):
                got[r.dst[0][0] + k] = r.src[0][0] + k
        mine = regrouped[:, rank.rank * local : (rank.rank + 1) * local].reshape(-1).tolist()
        assert [got[k] for k in range(len(mine))] == mine  # local row k <- source row, q | k | v of my heads
        assert sum(r.numel for r in param.reads) == len(mine) * 128  # nothing else read
        if tp > 1:  # one strided block per (q|k|v, head): my heads are not contiguous in the source
            assert len(param.reads) == 3 * local


def test_layout_mistakes_are_checkpoint_errors(tmp_path: Path) -> None:
    text = (SPECS / "gpt_neox.yaml").read_text()
    model = build_reference(load_ir(SPECS / "gpt_neox.yaml"), directory=tmp_path / "m")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace(
            "split: [heads, 3, head_dim], order: [1, 0, 2]", "split: [heads, 4, head_dim], order: [1, 0, 0]", 1
        )
    )
    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_ir(bad), model)
    assert "layout order [1, 0, 0] is not a permutation" in str(exc.value)
    bad.write_text(
        text.replace(
            "split: [heads, 3, head_dim], order: [1, 0, 2]", "split: [heads, 4, head_dim], order: [1, 0, 2]", 1
        )
    )
    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_ir(bad), model)
    assert "layout split [8, 4, 16] covers 512 along dim 0, the tensor has 384" in str(exc.value)
