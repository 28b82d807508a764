"""Dispatch, argument checks, and the package's import hygiene."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minisgl_kernels as kernels
from minisgl_kernels import norm_launch
from minisgl_kernels.options import AttentionOptions

ROOT = Path(__file__).resolve().parents[2]


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)


def test_import_is_cheap() -> None:
    res = _run_python(
        "import sys, minisgl_kernels as kernels\nprint(sorted(m for m in ('torch', 'triton') if m in sys.modules))\n"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]"]


def test_backend_env_var_forces_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(norm_launch, "rmsnorm_triton", lambda *a, **k: calls.append("triton"))
    monkeypatch.setenv(kernels.BACKEND_ENV, "triton")
    kernels.rmsnorm(torch.randn(2, 16), torch.randn(16), 1e-6)
    monkeypatch.setenv(kernels.BACKEND_ENV, "torch")
    kernels.rmsnorm(torch.randn(2, 16), torch.randn(16), 1e-6)
    assert calls == ["triton"]


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kernels.store_kv(
            torch.randn(1, 1, 16),
            torch.randn(1, 1, 16),
            torch.randn(2, 1, 16),
            torch.randn(2, 1, 16),
            torch.tensor([0]),
            backend="triton",
        )


def _extend_args(**over: object) -> dict:
    args: dict = {
        "q": torch.randn(5, 4, 32),
        "k": torch.randn(5, 2, 32),
        "v": torch.randn(5, 2, 32),
        "cu_seqlens_q": torch.tensor([0, 2, 5], dtype=torch.int32),
    }
    opts = {name: over.pop(name) for name in ("scale", "window", "softcap") if name in over}
    args.update(over)
    args["opts"] = AttentionOptions(**{"scale": 0.1, **opts})  # type: ignore[arg-type]
    return args


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"k": torch.randn(5, 3, 32), "v": torch.randn(5, 3, 32)}, "multiple of num_kv_heads"),
        ({"q": torch.randn(5, 4, 0), "k": torch.randn(5, 2, 0), "v": torch.randn(5, 2, 0)}, "head_dim must be >= 1"),
        ({"k": torch.randn(5, 2, 32).half()}, "k has dtype float16 but q has float32"),
        ({"v": torch.randn(4, 2, 32)}, "v must have shape"),
        ({"cu_seqlens_q": torch.tensor([0.0, 5.0])}, "cu_seqlens_q must have dtype"),
        ({"k_cache": torch.randn(9, 2, 32)}, "give all of k_cache"),
        ({"scale": -1.0}, "scale must be"),
        ({"window": 0}, "window must be"),
        ({"softcap": float("inf")}, "softcap must be"),
        ({"q": torch.randn(32, 5, 4).transpose(0, 2)}, "contiguous in its last dimension"),
    ],
)
def test_extend_attention_rejects_bad_arguments(over: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernels.extend_attention(**_extend_args(**over))


def test_head_dim_limit_is_per_backend() -> None:
    """The references take any head_dim; Triton (any device) stops at 256, before launching."""
    d, dev = 300, "cuda" if torch.cuda.is_available() else "cpu"
    qkv = {n: torch.randn(5, h, d, device=dev) for n, h in (("q", 4), ("k", 2), ("v", 2))}
    args = _extend_args(**qkv, cu_seqlens_q=torch.tensor([0, 2, 5], device=dev))
    out = kernels.extend_attention(**args, backend="torch")
    assert out.shape == (5, 4, d) and torch.isfinite(out).all()
    cache = torch.randn(3, 2, d, device=dev)
    with pytest.raises(ValueError, match=r"head_dim 1\.\.256, got 300"):
        kernels.extend_attention(**args, backend="triton")
    with pytest.raises(ValueError, match=r"head_dim 1\.\.256, got 300"):
        kernels.decode_attention(
            args["q"][:2],
            cache,
            cache,
            torch.tensor([0, 1, 3], device=dev),
            torch.arange(3, device=dev),
            opts=AttentionOptions(0.1),
            backend="triton",
        )
    with pytest.raises(ValueError, match=r"head_dim 1\.\.256, got 300"):
        slots = torch.arange(5, device=dev) - 2
        kernels.store_kv(args["k"], args["v"], cache, cache.clone(), slots, backend="triton")


def test_extend_reference_rejects_inconsistent_cu_seqlens() -> None:
    with pytest.raises(ValueError, match="cu_seqlens_q ends at 4"):
        kernels.extend_attention(**_extend_args(cu_seqlens_q=torch.tensor([0, 2, 4])), backend="torch")


def test_extend_prefix_checks_cache_shape() -> None:
    with pytest.raises(ValueError, match="k_cache must have shape"):
        kernels.extend_attention(
            **_extend_args(),
            k_cache=torch.randn(9, 4, 32),
            v_cache=torch.randn(9, 4, 32),
            prefix_indptr=torch.tensor([0, 1, 2]),
            prefix_slots=torch.tensor([3, 4]),
        )


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"kv_indptr": torch.tensor([0, 3])}, "kv_indptr must have shape"),
        ({"num_splits": 65}, "num_splits must be"),
        ({"v_cache": torch.randn(7, 2, 32)}, "v_cache must have shape"),
        ({"k_cache": torch.randn(8, 2, 32).bfloat16()}, "k_cache has dtype bfloat16"),
    ],
)
def test_decode_attention_rejects_bad_arguments(over: dict, message: str) -> None:
    args: dict = {
        "q": torch.randn(2, 4, 32),
        "k_cache": torch.randn(8, 2, 32),
        "v_cache": torch.randn(8, 2, 32),
        "kv_indptr": torch.tensor([0, 3, 5]),
        "kv_slots": torch.arange(5),
        "opts": AttentionOptions(0.1),
    }
    args.update(over)
    with pytest.raises(ValueError, match=message):
        kernels.decode_attention(**args)


def test_store_kv_rejects_slot_count_mismatch() -> None:
    k = torch.randn(3, 2, 32)
    cache = torch.randn(8, 2, 32)
    with pytest.raises(ValueError, match="slots must have shape"):
        kernels.store_kv(k, k, cache, cache, torch.tensor([0, 1]))
