"""Choosing a spec from a checkpoint's config.json (what `generate`/`serve` do without --spec)."""

from __future__ import annotations

import pytest
from _helpers import SPECS

from minisgl_decl.errors import UserError
from minisgl_decl.spec.find import find_spec


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "llama"),
        ({"architectures": ["Qwen3MoeForCausalLM"]}, "qwen3_moe"),
        ({"model_type": "gemma3_text"}, "gemma3"),
    ],
)
def test_spec_is_chosen_by_architecture_then_model_type(config: dict, name: str) -> None:
    assert find_spec(config, [SPECS]).name == name


def test_unknown_architecture_lists_what_is_served() -> None:
    with pytest.raises(UserError) as exc:
        find_spec({"architectures": ["FalconForCausalLM"]}, [SPECS])
    assert "no spec serves FalconForCausalLM" in str(exc.value) and "LlamaForCausalLM" in str(exc.value)
