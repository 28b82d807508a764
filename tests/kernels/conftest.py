"""Kernel tests: Triton kernels against their torch references.

Without CUDA the Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET=1 is
set here, before any test module imports triton. On a CUDA machine the same tests run
on the GPU (marked ``gpu``; ``pytest -m gpu`` selects them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # make the top-level `kernels` package importable without install
    sys.path.insert(0, _ROOT)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# one config per kernel variant instead of autotuning: GPU compile time stays small
# (tools/bench_kernels.py checks the autotuned configs at the benchmark shapes)
os.environ.setdefault("MINISGL_KERNELS_AUTOTUNE", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
