"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers() -> None:
    """No progress bars or info logs from transformers in test output."""
    try:
        import transformers
    except ImportError:  # kernel-only environments
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
