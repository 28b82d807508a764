"""When the catalogue's linear runs the GEMV kernel (minisgl_kernels/gemv_choice.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _kernel_helpers import HAS_CUDA
from torch.nn import functional as F

from minisgl_decl.catalogue.tp_linear import linear
from minisgl_kernels import gemv_choice, reference


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(gemv_choice.GEMV_ENV, raising=False)
    gemv_choice.clear()
    yield
    gemv_choice.clear()


@pytest.mark.parametrize("value", ["auto", "on", "off"])
def test_cpu_never_uses_the_gemv(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(gemv_choice.GEMV_ENV, value)
    assert not gemv_choice.use_gemv(torch.zeros(1, 8), torch.zeros(4, 8))


def test_bad_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gemv_choice.GEMV_ENV, "yes")
    monkeypatch.setattr(gemv_choice, "eligible", lambda x, w: True)
    with pytest.raises(ValueError, match="MINISGL_KERNELS_GEMV must be one of"):
        gemv_choice.use_gemv(torch.zeros(1, 8), torch.zeros(4, 8))


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (16, 16)])
def test_rows_bucket(rows: int, bucket: int) -> None:
    assert gemv_choice.rows_bucket(rows) == bucket


class _Timer:
    """Stands in for the CUDA timing: answers from a table and counts the decisions."""

    def __init__(self, answers: dict[int, bool]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, ...]] = []
        self.rows: list[int] = []

    def __call__(self, key: gemv_choice.Key, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> bool:
        self.calls.append(key[:3])
        self.rows.append(x.shape[0])
        return self.answers[key[0]]


def _auto(monkeypatch: pytest.MonkeyPatch, answers: dict[int, bool]) -> _Timer:
    timer = _Timer(answers)
    monkeypatch.setattr(gemv_choice, "eligible", lambda x, w: True)
    monkeypatch.setattr(gemv_choice, "_decide", timer)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return timer


def test_auto_decides_every_rows_bucket_of_a_shape_on_its_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = _auto(monkeypatch, {1: True, 2: True, 4: False, 8: False, 16: True})
    w = torch.zeros(6, 8)
    assert gemv_choice.use_gemv(torch.zeros(1, 8), w)
    assert timer.calls == [(b, 6, 8) for b in (1, 2, 4, 8, 16)]
    assert timer.rows == [1, 2, 4, 8, 16]  # timed on that many rows (copies of the first)
    assert not gemv_choice.use_gemv(torch.zeros(3, 8), w)  # bucket 4
    assert not gemv_choice.use_gemv(torch.zeros(8, 8), w)
    assert gemv_choice.use_gemv(torch.zeros(9, 8), w)  # bucket 16
    assert gemv_choice.use_gemv(torch.zeros(2, 8), w)
    assert len(timer.calls) == 5  # all cached
    gemv_choice.use_gemv(torch.zeros(1, 8), torch.zeros(7, 8))  # another N: decided anew
    assert timer.calls[-1] == (16, 7, 8) and len(timer.calls) == 10
    gemv_choice.use_gemv(torch.zeros(1, 8), w, torch.zeros(6))  # with a bias: another key
    assert len(timer.calls) == 15


def test_forced_modes_skip_the_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = _auto(monkeypatch, {})
    monkeypatch.setenv(gemv_choice.GEMV_ENV, "on")
    assert gemv_choice.use_gemv(torch.zeros(2, 8), torch.zeros(6, 8))
    monkeypatch.setenv(gemv_choice.GEMV_ENV, "off")
    assert not gemv_choice.use_gemv(torch.zeros(2, 8), torch.zeros(6, 8))
    assert timer.calls == []


def test_first_use_under_graph_capture_takes_torch_and_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = _auto(monkeypatch, dict.fromkeys(gemv_choice.BUCKETS, True))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not gemv_choice.use_gemv(torch.zeros(1, 8), torch.zeros(6, 8))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert not gemv_choice.use_gemv(torch.zeros(1, 8), torch.zeros(6, 8))  # same choice as in the graph
    assert timer.calls == []


@pytest.mark.parametrize("rows", [1, 2, 7, 40])
def test_catalogue_linear_on_cpu_is_f_linear(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x, w, b = torch.randn(rows, 24, generator=gen), torch.randn(10, 24, generator=gen), torch.randn(10, generator=gen)
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("value", ["auto", "on", "off"])
@pytest.mark.parametrize("rows", [1, 5, 16, 17])
def test_catalogue_linear_on_cuda(monkeypatch: pytest.MonkeyPatch, value: str, rows: int) -> None:
    monkeypatch.setenv(gemv_choice.GEMV_ENV, value)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1024, generator=gen).to("cuda", torch.bfloat16)
    w = (torch.randn(3000, 1024, generator=gen) / 32).to("cuda", torch.bfloat16)
    b = torch.randn(3000, generator=gen).to("cuda", torch.bfloat16)
    got = linear(x, w, b)
    want = reference.gemv(x, w, b)
    ulp = torch.finfo(torch.bfloat16).eps * want.float().abs().clamp_min(1.0)
    assert ((got.float() - want.float()).abs() <= 2 * ulp).all()
    if value == "auto" and rows <= gemv_choice.MAX_ROWS:
        assert len(gemv_choice.decisions()) == len(gemv_choice.BUCKETS)


_AGREE = """
import sys
import torch
import torch.distributed as dist
from minisgl_kernels import gemv_choice
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://{store}", rank=rank, world_size=2)
print("CHOICE", gemv_choice._agree(rank == 0, torch.device("cpu")), gemv_choice._agree(rank == 1, torch.device("cpu")))
dist.destroy_process_group()
"""


def test_every_rank_takes_rank_0s_choice(tmp_path: Path) -> None:
    code = _AGREE.format(store=tmp_path / "store")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(r)], stdout=subprocess.PIPE, text=True, env=env)
        for r in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all("CHOICE True False" in out for out in outs), outs
