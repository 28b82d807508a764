"""Fused checkpoint tensors (Phi-3 style `qkv_proj`, `gate_up_proj`): split by the plan.

The spec variant reads one fused tensor per parameter; the checkpoint holds the same
weights as a tiny transformers Llama, fused. Truth: transformers on the unfused original.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import make_fused

from minisgl_decl.cli.main import main
from minisgl_decl.parity.check import hf_reference_fn, run_parity_checks, verdict
from minisgl_decl.parity.hf_reference import load_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.plan.checkpoint import CheckpointError
from minisgl_decl.runtime.runner import ModelRunner
from minisgl_decl.spec.compile import load_ir


def test_fused_checkpoint_matches_transformers(tmp_path: Path) -> None:
    spec_file, fused, original = make_fused(tmp_path)
    c = compile_spec(load_ir(spec_file), fused, 1)
    assert c.plan is not None
    qkv = next(p for p in c.plan.ranks[0].params if p.name == "layers.0.attn.qkv.weight")
    assert [r.key for r in qkv.reads] == ["model.layers.0.self_attn.qkv_proj.weight"]
    model = load_model(c)
    hf = load_reference(original, "LlamaForCausalLM")
    results = run_parity_checks(lambda: ModelRunner(model, 256), hf_reference_fn(hf), hf.config.vocab_size)
    ok, worst = verdict(results)
    assert ok, worst


def test_fused_split_at_tp4_takes_heads_from_each_segment(tmp_path: Path) -> None:
    spec_file, fused, _ = make_fused(tmp_path, {"num_key_value_heads": 1})
    c = compile_spec(load_ir(spec_file), fused, 4)
    assert c.plan is not None
    for rank in range(4):
        qkv = next(p for p in c.plan.ranks[rank].params if p.name == "layers.1.attn.qkv.weight")
        # fused rows: q 8 heads x 32 = 0:256, k 256:288, v 288:320; 2 q heads per rank, the one kv
        # head (k and v, adjacent in the file and in the shard: one read) on every rank
        rows = [i for r in qkv.reads for i in range(*r.src[0])]
        assert rows == [*range(64 * rank, 64 * rank + 64), *range(256, 320)]
        assert [i for r in qkv.reads for i in range(*r.dst[0])] == list(range(128))
        assert qkv.ops("F32")[0] == {"op": "slice", "from": "model.layers.1.self_attn.qkv_proj.weight"}


def test_fused_tensor_that_does_not_split_evenly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file, fused, _ = make_fused(tmp_path, extra_row=True)
    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_ir(spec_file), fused, 2)
    assert len(exc.value.problems) == 1
    assert main(["compile", str(spec_file), "--model", str(fused), "--tp", "2"]) == 1
    err = capsys.readouterr().err
    line = next(
        n
        for n, s in enumerate(spec_file.read_text().splitlines(), 1)
        if s.strip().startswith("layers.{i}.attn.qkv.weight:")
    )
    for needle in (
        "fused tensor `model.layers.1.self_attn.qkv_proj.weight`",
        "does not split evenly",
        "expected 384 along dim 0 = q heads (8 x 32) | kv heads (2 x 32) | kv heads (2 x 32)",
        "found 385",
        f"llama_fused.yaml:{line}",
    ):
        assert needle in err, err
    assert "Traceback" not in err
