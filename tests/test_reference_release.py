"""`check` refuses a transformers release older than a spec's `serves.transformers_min`.

transformers 5.17 (the GPU image's) builds GptOssExperts with alpha 1.702 and limit 7.0
whatever the config says, so `check specs/gpt_oss.yaml` (example swiglu_limit 1.5) failed there
by 0.19 in the logits and named our MoE, on CUDA and on the CPU alike. The spec now says which
release computes what it describes, and `check` says so instead of blaming our model.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from _helpers import SPECS
from packaging.version import Version

from minisgl_decl.cli.main import main
from minisgl_decl.errors import UserError
from minisgl_decl.parity.hf_reference import require_reference_release
from minisgl_decl.parity.run import check_random_model
from minisgl_decl.spec.compile import load_ir


def _installed(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """Pretend transformers `version` is installed (on the module `import transformers` returns now)."""
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", version)


def test_gpt_oss_declares_the_release_that_honours_its_swiglu_config() -> None:
    spec = load_ir(SPECS / "gpt_oss.yaml")
    assert spec.transformers_min is not None
    assert spec.example_config["swiglu_limit"] != 7.0  # the case the old releases get wrong
    assert Version(importlib.import_module("transformers").__version__) >= Version(spec.transformers_min)
    require_reference_release(spec)  # the installed release is accepted


def test_installed_gpt_oss_experts_read_the_config() -> None:
    """What the declaration rests on, on the installed release: its experts take limit and alpha from the config."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    spec = load_ir(SPECS / "gpt_oss.yaml")
    cfg = GptOssConfig(**{k: v for k, v in spec.example_config.items() if k not in ("architectures", "model_type")})
    experts = GptOssExperts(cfg)
    assert experts.limit == spec.example_config["swiglu_limit"]


def test_older_release_is_refused_with_the_spec_location(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_ir(SPECS / "gpt_oss.yaml")
    _installed(monkeypatch, "5.17.0")
    with pytest.raises(UserError) as exc:
        check_random_model(spec)
    text = str(exc.value)
    assert "gpt_oss.yaml:" in text and f">= {spec.transformers_min}" in text and "5.17.0" in text


def test_cli_check_reports_it_as_an_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _installed(monkeypatch, "5.17.0")
    assert main(["check", str(SPECS / "gpt_oss.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "transformers_min" in err and "Traceback" not in err


def test_specs_without_the_field_take_any_release(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_ir(SPECS / "llama.yaml")
    assert spec.transformers_min is None
    _installed(monkeypatch, "4.45.0")
    require_reference_release(spec)
    newer = dataclasses.replace(spec, transformers_min="99.0")
    with pytest.raises(UserError, match=r">= 99\.0"):
        require_reference_release(newer)
