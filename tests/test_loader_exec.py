"""The streaming executor fills every rank's shard exactly as the roles say.

The truth is the checkpoint read by the `safetensors` library itself, cut with the
parameter's role (`rank_pieces`): no result of our executor is compared with itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from _helpers import SPECS
from safetensors.torch import load_file, save_file

from minisgl_decl.catalogue.params import Replicated
from minisgl_decl.errors import UserError
from minisgl_decl.parity.hf_reference import build_reference
from minisgl_decl.pipeline import compile_spec, load_model
from minisgl_decl.plan import execute
from minisgl_decl.plan.build import rule_for
from minisgl_decl.plan.model import ParamPlan, RankPlan, Read
from minisgl_decl.spec.compile import load_ir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("llama")
    # kv_heads=1 (replicated at tp 2/4), prime vocab (padded), biases (1-d sharded params)
    build_reference(
        load_ir(SPECS / "llama.yaml"),
        {"num_key_value_heads": 1, "vocab_size": 97, "attention_bias": True, "mlp_bias": True},
        directory=d,
    )
    return d


def _expected_local(name: str, decl, spec, tensors, tp: int, rank: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    rule, i = rule_for(name, spec.weights.rules)  # type: ignore[misc]
    rule = rule.expand(i)
    full = torch.cat([tensors[s.key] for s in rule.sources], dim=rule.dim)
    if isinstance(decl.role, Replicated):
        return full
    dim = decl.role.dim
    parts = []
    for a, b in decl.rank_pieces(tp, rank):
        real = full.narrow(dim, a, max(0, min(b, full.shape[dim]) - a))
        pad_shape = list(full.shape)
        pad_shape[dim] = b - a - real.shape[dim]
        parts += [real, torch.zeros(pad_shape)]
    return torch.cat(parts, dim=dim)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("chunk", [execute.CHUNK_BYTES, 96])
def test_every_rank_gets_its_slices(llama_dir: Path, tp: int, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(execute, "CHUNK_BYTES", chunk)  # 96 bytes: many chunks per tensor
    spec = load_ir(SPECS / "llama.yaml")
    c = compile_spec(spec, llama_dir, tp)
    assert c.plan is not None
    tensors = load_file(str(llama_dir / "model.safetensors"))
    decls = {n: d for n, d, _ in c.graph.parameters}
    for rank in range(tp):
        got = dict(execute.materialise(c.plan.ranks[rank], llama_dir))
        assert set(got) == set(decls)
        for name, t in got.items():
            want = _expected_local(name, decls[name], spec, tensors, tp, rank)
            assert t.shape == decls[name].local_shape(tp)
            torch.testing.assert_close(t, want, rtol=0, atol=0, msg=f"{name} rank {rank}/{tp}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_cast_on_load(llama_dir: Path, dtype: torch.dtype) -> None:
    spec = load_ir(SPECS / "llama.yaml")
    c = compile_spec(spec, llama_dir, 2)
    assert c.plan is not None
    tensors = load_file(str(llama_dir / "model.safetensors"))
    decls = {n: d for n, d, _ in c.graph.parameters}
    for name, t in execute.materialise(c.plan.ranks[1], llama_dir, dtype=dtype):
        assert t.dtype == dtype
        want = _expected_local(name, decls[name], spec, tensors, 2, 1).to(dtype)
        torch.testing.assert_close(t, want, rtol=0, atol=0)


def test_plan_records_the_load_dtype(llama_dir: Path) -> None:
    spec = load_ir(SPECS / "llama.yaml")
    c = compile_spec(spec, llama_dir, dtype=torch.bfloat16)
    assert c.plan is not None and c.plan.dtype == "BF16"
    casts = [op for p in c.plan.to_json()["ranks"][0]["params"] for op in p["ops"] if op["op"] == "cast"]
    assert casts and all(op == {"op": "cast", "from": "F32", "to": "BF16"} for op in casts)  # F32 checkpoint
    model = load_model(c)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model(c, dtype=torch.float16).parameters()} == {torch.float16}
    with pytest.raises(UserError, match="floating-point"):
        compile_spec(spec, llama_dir, dtype=torch.int8)


def test_transpose_add_scalar_and_bf16_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = torch.randn(6, 5)
    h = torch.randn(4, 3).to(torch.bfloat16)
    s = torch.tensor(2.5)
    save_file({"a": a, "h": h, "s": s}, str(tmp_path / "x.safetensors"))
    from minisgl_decl.plan.checkpoint import scan_checkpoint

    (tmp_path / "config.json").write_text("{}")
    info = scan_checkpoint(tmp_path).tensors
    monkeypatch.setattr(execute, "CHUNK_BYTES", 24)  # 1-2 stored rows per chunk

    def read(key: str, src: tuple[tuple[int, int], ...], dst: tuple[tuple[int, int], ...], t: bool = False) -> Read:
        i = info[key]
        return Read(key, i.file, i.offset, i.shape, i.dtype, src, dst, t)

    params = (
        # a[1:4, :] stored, transposed into columns 2:5 of a [5, 7] local tensor, +1
        ParamPlan(
            "t", (5, 7), (5, 7), "replicated", (read("a", ((1, 4), (0, 5)), ((0, 5), (2, 5)), True),), 1.0, "test:1"
        ),
        ParamPlan("h", (4, 2), (4, 3), "column", (read("h", ((0, 4), (1, 3)), ((0, 4), (0, 2))),), None, "test:2"),
        ParamPlan("s", (), (), "replicated", (read("s", (), ()),), None, "test:3"),
    )
    got = dict(execute.materialise(RankPlan(0, params), tmp_path))
    want_t = torch.zeros(5, 7)
    want_t[:, 2:5] = a[1:4, :].t() + 1.0
    torch.testing.assert_close(got["t"], want_t, rtol=0, atol=0)  # zero pad stays 0 (add only on reads)
    torch.testing.assert_close(got["h"], h[:, 1:3].float(), rtol=0, atol=0)
    assert float(got["s"]) == 2.5


def test_no_pickle_no_mmap(llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("the loader must not unpickle or memory-map")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("safetensors.safe_open", forbidden)
    monkeypatch.setattr("mmap.mmap", forbidden)
    c = compile_spec(load_ir(SPECS / "llama.yaml"), llama_dir, 2)
    assert c.plan is not None
    assert len(list(execute.materialise(c.plan.ranks[0], llama_dir))) == len(c.plan.ranks[0].params)


def test_progress_bar_counts_every_byte(llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = compile_spec(load_ir(SPECS / "llama.yaml"), llama_dir, 2)
    assert c.plan is not None
    seen: list[int] = []
    list(execute.materialise(c.plan.ranks[1], llama_dir, progress=seen.append))
    assert sum(seen) >= c.plan.ranks[1].nbytes > 0
    list(execute.stream(c.plan.ranks[1], llama_dir, progress=True))
    assert "B/s" in capsys.readouterr().err
    list(execute.stream(c.plan.ranks[1], llama_dir))  # not a TTY here: no bar
    assert capsys.readouterr().err == ""
