"""The JSON Schema printed by `schema` validates real specs and rejects what it can know is wrong."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from minisgl_decl.catalogue import catalogue_names
from minisgl_decl.spec.json_schema import spec_json_schema

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"
BAD = ROOT / "tests" / "specs" / "bad"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _messages(error: jsonschema.ValidationError) -> list[str]:
    """The error and, for any-of/one-of failures, why each alternative failed."""
    return [error.message] + [m for sub in error.context or [] for m in _messages(sub)]


def _errors(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    return [m for e in validator.iter_errors(doc) for m in _messages(e)]


def _llama() -> dict[str, Any]:
    return yaml.safe_load((SPECS / "llama.yaml").read_text())


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_spec_is_valid(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    assert _errors(validator, yaml.safe_load(path.read_text())) == []


def test_cli_prints_the_same_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "schema"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert json.loads(out.stdout) == json.loads(json.dumps(spec_json_schema()))


def test_unknown_layer_in_bad_corpus(validator: jsonschema.Draft202012Validator) -> None:
    errors = _errors(validator, yaml.safe_load((BAD / "unknown_layer.yaml").read_text()))
    assert any("'rmsnrom' is not one of" in e for e in errors)


def test_unknown_argument_in_bad_corpus(validator: jsonschema.Draft202012Validator) -> None:
    errors = _errors(validator, yaml.safe_load((BAD / "bad_arg.yaml").read_text()))
    assert any("'activation' was unexpected" in e for e in errors)


def test_unknown_top_key_and_config_entry_kind(validator: jsonschema.Draft202012Validator) -> None:
    assert any(
        "'serve' was unexpected" in e
        for e in _errors(validator, yaml.safe_load((BAD / "unknown_key.yaml").read_text()))
    )
    assert _errors(validator, yaml.safe_load((BAD / "config_entry_kind.yaml").read_text()))


def test_the_issue_example_rmsnrom_with_bogus(validator: jsonschema.Draft202012Validator) -> None:
    doc = _llama()
    doc["model"]["layers"]["modules"]["attn_norm"] = {"rmsnrom": {"dim": "hidden", "bogus": 1}}
    assert any("'rmsnrom' is not one of" in e for e in _errors(validator, doc))
    doc["model"]["layers"]["modules"]["attn_norm"] = {"rmsnorm": {"dim": "hidden", "bogus": 1}}
    assert any("'bogus' was unexpected" in e for e in _errors(validator, doc))


@pytest.mark.parametrize(
    ("layer", "arg", "value"),
    [
        ("attn_norm", "eps", [1e-5]),  # a list where a number goes
        ("attn_norm", "dim", True),  # a bool where an integer goes
        ("attn_norm", "dim", 0),  # not positive
        ("attn_norm", "cast_before_weight", 1.5),
    ],
)
def test_wrong_literal_type(validator: jsonschema.Draft202012Validator, layer: str, arg: str, value: Any) -> None:
    doc = _llama()
    doc["model"]["layers"]["modules"][layer]["rmsnorm"][arg] = value
    assert _errors(validator, doc)


def test_expressions_stay_allowed(validator: jsonschema.Draft202012Validator) -> None:
    doc = _llama()
    doc["model"]["layers"]["modules"]["attn_norm"]["rmsnorm"]["eps"] = "eps * 2"
    doc["model"]["layers"]["modules"]["mlp"]["gated_mlp"]["act"] = "'gelu'"
    assert _errors(validator, doc) == []


def test_if_on_module_entries(validator: jsonschema.Draft202012Validator) -> None:
    doc = _llama()
    doc["model"]["layers"]["modules"]["extra"] = {"if": "i % 2 == 0", "rmsnorm": {"dim": "hidden"}}
    assert _errors(validator, doc) == []
    doc["model"]["layers"]["modules"]["extra"] = {"if": "i > 0"}  # a condition and no layer
    assert _errors(validator, doc)
    doc["model"]["layers"]["modules"]["extra"] = {"if": [1], "rmsnorm": {"dim": "hidden"}}
    assert _errors(validator, doc)
    doc["model"]["layers"]["modules"]["extra"] = {"rmsnorm": {"dim": "hidden"}, "layernorm": {"dim": "hidden"}}
    assert _errors(validator, doc)


def test_required_argument_missing_in_a_full_spec_only(validator: jsonschema.Draft202012Validator) -> None:
    doc = _llama()
    del doc["model"]["layers"]["modules"]["attn_norm"]["rmsnorm"]["dim"]
    assert any("'dim' is a required property" in e for e in _errors(validator, doc))
    override = {
        "spec_version": 1,
        "extends": "llama",
        "name": "x",
        "model": {"layers": {"modules": {"attn_norm": {"rmsnorm": {"eps": 1e-5}}, "mlp": None}}},
    }
    assert _errors(validator, override) == []
    override["model"]["layers"]["modules"]["attn_norm"] = {"rmsnorm": {"bogus": 1}}
    assert any("'bogus' was unexpected" in e for e in _errors(validator, override))
    assert _errors(validator, {**copy.deepcopy(override), "extends": 3})


def test_one_definition_per_layer_with_words_defaults_and_enums() -> None:
    defs = spec_json_schema()["$defs"]
    for layer in catalogue_names():
        props = defs[f"layer_{layer}"]["properties"]
        assert props, layer
        for arg, prop in props.items():
            assert "<class" not in prop["description"] and "typing" not in prop["description"], (layer, arg)
    gated = defs["layer_gated_mlp"]["properties"]["act"]
    assert gated["default"] == "'silu'" and "'gelu_pytorch_tanh'" in gated["examples"]
    assert defs["layer_linear"]["properties"]["parallel"]["examples"] == ["'column'", "'row'", "'replicated'"]
    assert defs["layer_attention"]["properties"]["qk_norm_scope"]["examples"] == ["'head'", "'per_head'", "'full'"]
    assert "longrope" in defs["layer_attention"]["properties"]["rope"]["description"]


def test_writing_a_spec_worked_example_is_the_shipped_spec() -> None:
    """docs/writing-a-spec.md shows specs/olmo2.yaml; the two must not drift apart."""
    import re

    doc = (ROOT / "docs" / "writing-a-spec.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    shown = next(yaml.safe_load(b) for b in blocks if "name: olmo2" in b)
    assert shown == yaml.safe_load((SPECS / "olmo2.yaml").read_text())


# what a schema can know (names, keys, literal types) vs what needs the catalogue build or the
# expression parser (validate catches those; the schema lets them through)
SCHEMA_KNOWS = ["bad_arg.yaml", "config_entry_kind.yaml", "unknown_key.yaml", "unknown_layer.yaml"]
NEEDS_VALIDATE = [
    "bad_statement.yaml",
    "expr_syntax.yaml",
    "rule_no_param.yaml",
    "undefined_config_name.yaml",
    "unsafe_expr.yaml",
]


def test_bad_corpus_split(validator: jsonschema.Draft202012Validator) -> None:
    parsed = {}
    for p in sorted(BAD.glob("*.yaml")):
        try:
            parsed[p.name] = yaml.safe_load(p.read_text())
        except yaml.YAMLError:
            continue  # yaml_syntax.yaml: not a document at all
    assert sorted(parsed) == sorted(SCHEMA_KNOWS + NEEDS_VALIDATE)
    for name in SCHEMA_KNOWS:
        assert _errors(validator, parsed[name]), name
    for name in NEEDS_VALIDATE:
        assert _errors(validator, parsed[name]) == [], name


def test_every_argument_is_described_in_words() -> None:
    from minisgl_decl.catalogue import get_layer
    from minisgl_decl.spec.json_schema import _WORDS

    for layer in catalogue_names():
        for arg, f in get_layer(layer).Args.model_fields.items():
            assert f.description or arg in _WORDS, f"{layer}.{arg} has no description"
