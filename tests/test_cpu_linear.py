"""`catalogue.tp_linear.linear` (the CPU routing of a few-row product) against torch's `F.linear`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from minisgl_decl.catalogue.tp_linear import FEW_ROWS, linear


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 2, 3, FEW_ROWS - 1, FEW_ROWS, 17])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_matches_torch(one_thread: None, rows: int, with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(300, 96, generator=gen)
    b = torch.randn(300, generator=gen) if with_bias else None
    x = torch.randn(rows, 96, generator=gen)
    got = linear(x, w, b)
    assert got.shape == (rows, 300) and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_linear_non_contiguous_input_and_inference_mode(one_thread: None) -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=gen)
    x = torch.randn(3, 96, generator=gen)[:, ::2]  # strided rows
    with torch.inference_mode():
        torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(x[:1], w), F.linear(x[:1], w), rtol=1e-5, atol=1e-5)


def test_linear_other_shapes_fall_back(one_thread: None) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(32, 16, generator=gen)
    x3 = torch.randn(2, 3, 16, generator=gen)  # 3-d input: plain F.linear
    assert torch.equal(linear(x3, w), F.linear(x3, w))
    empty = torch.randn(0, 16)
    assert linear(empty, w).shape == (0, 32)
