"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers() -> None:
    from minisgl_decl.parity.run import quiet_transformers

    quiet_transformers()
