"""Experts stacked in one checkpoint tensor (an `experts:` rule whose source has no `{e}`),
stored transposed and with gate/up interleaved column by column (`layout:` on a transposed
source), as GPT-OSS checkpoints are: the loaded parameters equal the re-laid-out tensor, and
each rank's plan reads only its own experts' slabs and its own columns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec
from minisgl_decl.plan.checkpoint import CheckpointError
from minisgl_decl.plan.execute import materialise
from minisgl_decl.spec.load import load_spec

SPECS = Path(__file__).resolve().parent.parent / "specs"
KEY = "model.layers.1.mlp.experts."


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_reference(load_spec(SPECS / "gpt_oss.yaml"), directory=tmp_path_factory.mktemp("gpt-oss"))


@pytest.mark.parametrize("tp", [1, 2])
def test_stacked_interleaved_transposed_experts_load_this_ranks_part(model: Path, tp: int) -> None:
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        gate_up, bias, down = (f.get_tensor(KEY + n) for n in ("gate_up_proj", "gate_up_proj_bias", "down_proj"))
    experts, hidden, two_f = gate_up.shape
    ffn = two_f // 2
    # the runtime layout: per expert [gate rows | up rows, hidden]; gate = even columns, up = odd
    want_gate_up = torch.cat((gate_up[:, :, 0::2], gate_up[:, :, 1::2]), dim=2).transpose(1, 2)
    want_bias = torch.cat((bias[:, 0::2], bias[:, 1::2]), dim=1)
    want_down = down.transpose(1, 2)
    plan = compile_spec(load_spec(SPECS / "gpt_oss.yaml"), model, tp=tp).plan
    local = ffn // tp
    for rank in plan.ranks:
        mine = [*range(rank.rank * local, (rank.rank + 1) * local)]
        rows = mine + [ffn + j for j in mine]
        params = dict(materialise(rank, model))
        torch.testing.assert_close(params["layers.1.moe.gate_up"], want_gate_up[:, rows], atol=0, rtol=0)
        torch.testing.assert_close(params["layers.1.moe.gate_up_bias"], want_bias[:, rows], atol=0, rtol=0)
        torch.testing.assert_close(params["layers.1.moe.down"], want_down[:, :, mine], atol=0, rtol=0)
        (p,) = [p for p in rank.params if p.name == "layers.1.moe.gate_up"]
        columns = {2 * j + c for j in mine for c in (0, 1)}
        slab = hidden * two_f * 4  # float32 bytes of one expert
        base = min(r.offset for r in p.reads)
        for r in p.reads:
            e = r.dst[0][0]
            assert r.offset == base + e * slab and r.shape == (hidden, two_f)  # expert e's slab, read alone
            assert set(range(*r.src[1])) <= columns  # stored columns of this rank's gate/up pairs only
        assert sum(r.numel for r in p.reads) == experts * hidden * 2 * local


def test_a_stacked_source_must_hold_every_expert(model: Path, tmp_path: Path) -> None:
    tensors = load_file(str(model / "model.safetensors"))
    extra = tensors[KEY + "down_proj"]
    tensors[KEY + "down_proj"] = torch.cat((extra, extra[:1]))
    out = tmp_path / "bad"
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text((model / "config.json").read_text())
    with pytest.raises(CheckpointError) as exc:
        compile_spec(load_spec(SPECS / "gpt_oss.yaml"), out)
    (problem,) = exc.value.problems
    assert f"`{KEY}down_proj`" in problem and "must stack all 4 experts along dim 0" in problem
    assert "found shape [5, 48, 64]" in problem and "gpt_oss.yaml" in problem
