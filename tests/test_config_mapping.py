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


def _llama3_rope(low: object, high: object) -> dict[str, object]:
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "original_max_position_embeddings": 64}
    return {**BASE, "rope_parameters": {**rope, "low_freq_factor": low, "high_freq_factor": high}}


def _rope_problem(cfg: dict[str, object]) -> str:
    """The one problem of resolving `cfg`, which must stand at the spec's `rope:` entry."""
    with pytest.raises(SpecError) as exc:
        resolve_config(_llama(), cfg)
    (problem,) = exc.value.problems
    lines = (SPECS / "llama.yaml").read_text().splitlines()
    assert problem.location.line == next(i for i, t in enumerate(lines) if t.startswith("  rope:")) + 1
    return problem.message


def test_llama3_rope_zero_low_freq_factor_is_a_config_error() -> None:
    message = _rope_problem(_llama3_rope(0, 4.0))  # used to be an AssertionError when the rope was built
    assert message.startswith("config `rope`: rope type `llama3`: `low_freq_factor` = 0, but it must be a positive")
    assert "fix it in the checkpoint's config.json" in message


def test_llama3_rope_equal_freq_factors_is_a_config_error() -> None:
    message = _rope_problem(_llama3_rope(2.0, 2.0))  # used to divide by high - low == 0
    assert "`low_freq_factor` and `high_freq_factor` are both 2" in message
    assert "`high_freq_factor` must be larger" in message and "config.json" in message


def test_llama3_rope_frequencies_stay_finite_for_valid_factors() -> None:
    from minisgl_decl.catalogue.rotary import rope_frequencies

    inv_freq, _, _ = rope_frequencies(resolve_config(_llama(), _llama3_rope(1, 4))["rope"], 16)
    assert bool(inv_freq.isfinite().all()) and bool((inv_freq > 0).all())
