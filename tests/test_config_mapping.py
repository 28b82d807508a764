"""Config mapping: aliases, defaults, expressions, transformers 4.x vs 5.x rope, text_config."""

from __future__ import annotations

import pytest
from _helpers import SPECS

from minisgl_decl.config.resolve import resolve_config
from minisgl_decl.errors import SpecError
from minisgl_decl.spec.compile import load_ir

BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96, "vocab_size": 50}


def _llama():
    return load_ir(SPECS / "llama.yaml")


def test_defaults_and_expressions() -> None:
    cfg = resolve_config(_llama(), BASE)
    assert cfg["kv_heads"] == 4 and cfg["head_dim"] == 16 and cfg["eps"] == 1e-6 and cfg["act"] == "silu"
    assert cfg["rope"].type == "default" and cfg["rope"].theta == 10000.0


def test_v4_and_v5_rope_configs_resolve_identically() -> None:
    v4 = {
        **BASE,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    v5 = {
        **BASE,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }
    assert resolve_config(_llama(), v4)["rope"] == resolve_config(_llama(), v5)["rope"]
    legacy_type_key = {**BASE, "rope_theta": 1e4, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert resolve_config(_llama(), legacy_type_key)["rope"].type == "linear"


def test_nested_text_config_is_read_first() -> None:
    wrapped = {"architectures": ["X"], "text_config": BASE, "vocab_size": 999}
    assert resolve_config(_llama(), wrapped).as_dict() == resolve_config(_llama(), BASE).as_dict()


def test_per_layer_type_rope_needs_a_choice() -> None:
    nested = {
        **BASE,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    with pytest.raises(SpecError) as exc:
        resolve_config(_llama(), nested)
    assert "layer_type" in str(exc.value)


def test_unsupported_rope_type_is_an_error_not_ignored() -> None:
    cfg = {**BASE, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}
    with pytest.raises(SpecError) as exc:
        resolve_config(_llama(), cfg)
    assert "rope type `dynamic` is not supported" in str(exc.value)


def test_missing_required_field_is_located() -> None:
    cfg = {k: v for k, v in BASE.items() if k != "vocab_size"}
    with pytest.raises(SpecError) as exc:
        resolve_config(_llama(), cfg)
    (problem,) = exc.value.problems
    assert "vocab_size" in problem.message
    lines = (SPECS / "llama.yaml").read_text().splitlines()
    assert problem.location.line == next(i for i, t in enumerate(lines) if t.startswith("  vocab:")) + 1


def test_type_mismatch_is_reported() -> None:
    with pytest.raises(SpecError) as exc:
        resolve_config(_llama(), {**BASE, "num_attention_heads": 4.5})
    assert "expected an integer" in str(exc.value)
