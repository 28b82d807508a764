"""The typed form: the spec's text is parsed once, by `spec/compile.py`; no later stage parses it.

Every parser of spec text (expressions, dataflow statements) goes through `ast.parse`, so
with `ast.parse` made to fail, resolving the config, building the graph and program and
building the loader plan must still work from the compiled form alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from _helpers import SPECS

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.spec.compile import load_ir
from minisgl_decl.spec.located import SpecExpr


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> ast.AST:
        raise AssertionError("spec text parsed after the spec was compiled")

    monkeypatch.setattr(ast, "parse", refuse)


@pytest.mark.parametrize("spec_file", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_and_graph_stages_never_parse(spec_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ir = load_ir(spec_file)
    _no_parsing(monkeypatch)
    graph = compile_spec(ir, tp=2).graph
    assert graph.num_layers > 0 and graph.program


@pytest.mark.parametrize(
    ("name", "what"),
    [("llama", "tied_if"), ("gpt_neox", "layout split"), ("qwen3_moe", "experts")],
)
def test_plan_stage_never_parses(name: str, what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ir = load_ir(SPECS / f"{name}.yaml")
    rules = ir.weights.rules
    exprs = [r.tied_if for r in rules] + [r.experts for r in rules]
    exprs += [v for r in rules for s in r.sources if s.layout for v in s.layout.split]
    assert any(isinstance(e, SpecExpr) for e in exprs), f"{name} has no {what} expression to evaluate"
    ckpt = build_reference(ir, directory=tmp_path / "ckpt")
    _no_parsing(monkeypatch)
    compiled = compile_spec(ir, ckpt, tp=2)
    assert compiled.plan is not None and len(compiled.plan.ranks) == 2
