"""The JSON Schema of spec files, for editors and CI (`minisgl-decl schema`).

Module entries get one schema per catalogue layer: the layer name must be a catalogue
layer, its arguments must be that layer's arguments, each with a description in words,
its default, and the enum of allowed values where the catalogue has one. An argument may
always be a string (an expression over config names, and `i` in the layer stack), so only
the type of a *literal* is checked here; `validate` checks the resolved values.

A spec with `extends:` is an override: nothing is required, and `null` deletes an
inherited key, so it is checked against a relaxed copy of the same schema.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..catalogue import catalogue_names, get_layer
from ..config.rope import SUPPORTED_ROPE_TYPES
from .schema import MODULE_IF, Spec

SCHEMA_ID = "https://minisgl-decl/spec.schema.json"
EXPRESSION = {"type": "string", "description": "An expression over config names (and `i` in the layer stack)"}
PARTIAL = "__override"

#: enums the catalogue keeps outside the Args models (argument name -> allowed values)
_ARG_ENUMS: dict[str, tuple[str, ...]] = {}


#: words for argument names whose Args field has no `description` (shared across layers)
_WORDS: dict[str, str] = {
    "hidden": "Model width (hidden size)",
    "dim": "Width of the input features",
    "heads": "Query heads",
    "kv_heads": "Key/value heads (GQA: fewer than heads)",
    "head_dim": "Width of one attention head",
    "rope": "Rotary embedding settings (a `rope:` config entry); null: no rope",
    "qkv_bias": "Bias on q, k and v",
    "o_bias": "Bias on the output projection",
    "qk_norm": "Normalise q and k before rope",
    "qk_norm_type": "Kind of the q/k norm",
    "qk_norm_scope": "head: one weight shared by every head; per_head: "
    "each head its own weights; full: over the whole projection",
    "qk_norm_bias": "LayerNorm q/k norm with a bias",
    "qk_norm_eps": "Epsilon of the q/k norm",
    "qk_norm_offset": "The q/k norm multiplies by (offset + weight)",
    "qk_norm_cast_before_weight": "Round to the activation dtype before the weight (false: Gemma-style float32)",
    "scale": "Multiplier (attention: softmax scale, default head_dim ** -0.5; embedding: row scale)",
    "window": "Sliding window: keys within this many positions; null: full attention",
    "softcap": "Soft-cap of the attention logits (cap * tanh(x / cap)); null: none",
    "cap": "Soft-cap value; null: identity",
    "ffn": "Width of the feed-forward hidden layer (per expert in a MoE)",
    "act": "Activation function",
    "fn": "Activation function",
    "bias": "Learned bias",
    "eps": "Epsilon added to the variance",
    "offset": "The weight factor is (offset + weight): Gemma's 1 + w",
    "cast_before_weight": "Round to the activation dtype before the weight (HF Llama); false: multiply in float32",
    "vocab": "Vocabulary size",
    "in_dim": "Input width",
    "out_dim": "Output width",
    "parallel": "Tensor-parallel mode: column (split outputs), row (split inputs), replicated",
    "experts": "Number of routed experts",
    "top_k": "Experts chosen per token",
    "norm_topk_prob": "Renormalise the chosen experts' weights to sum to 1",
    "max_positions": "Positions in the table",
}


def _arg_enums() -> dict[str, tuple[str, ...]]:
    if not _ARG_ENUMS:
        from ..catalogue.mlp import ACTIVATIONS

        _ARG_ENUMS.update({"act": tuple(sorted(ACTIVATIONS)), "fn": tuple(sorted(ACTIVATIONS))})
    return _ARG_ENUMS


def _quoted(values: list[Any]) -> list[Any]:
    """String literals as the spec writes them: an argument string is an expression, so `'silu'`."""
    return [f"'{v}'" if isinstance(v, str) else v for v in values]


def _literal_schema(annotation: Any) -> tuple[dict[str, Any], str]:
    """(JSON Schema of a literal of this Python type, the type in words)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = _quoted(list(typing.get_args(annotation)))
        return {"enum": values}, "one of " + ", ".join(f"`{v}`" for v in values)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        schemas = [_literal_schema(a) for a in parts]
        words = " or ".join(w for _, w in schemas)
        alternatives = [s for s, _ in schemas]
        if len(parts) < len(typing.get_args(annotation)):
            words += " (null: none)"
            alternatives.append({"type": "null"})
        return ({"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]), words
    simple = {
        bool: ("boolean", "true or false"),
        int: ("integer", "an integer"),
        float: ("number", "a number"),
        str: ("string", "a quoted name such as `'x'`"),
    }
    if annotation in simple:
        json_type, words = simple[annotation]
        return {"type": json_type}, words
    if getattr(annotation, "__name__", "") == "RopeConfig":
        return {"not": {}}, (
            "the name of a `rope:` config entry (HF rope types: " + ", ".join(SUPPORTED_ROPE_TYPES) + ")"
        )
    return {}, "a value"


def _arg_schema(name: str, field: FieldInfo) -> dict[str, Any]:
    literal, words = _literal_schema(field.annotation)
    if literal.get("type") == "integer" and any(getattr(m, "gt", None) == 0 for m in field.metadata):
        literal, words = {"type": "integer", "exclusiveMinimum": 0}, "a positive integer"
    enum = _arg_enums().get(name)
    if enum:
        literal = {"enum": _quoted(list(enum))}
        words = "one of " + ", ".join(f"`{v}`" for v in literal["enum"])
    description = field.description or _WORDS.get(name) or name.replace("_", " ").capitalize()
    out: dict[str, Any] = {
        "description": f"{description}: {words}; or an expression over config names",
        "anyOf": [literal, EXPRESSION],
    }
    if not field.is_required():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, (bool, int, float, str)) or default is None:
            out["default"] = _quoted([default])[0]
    if literal.get("enum"):
        out["examples"] = literal["enum"]
    return out


def layer_schema(layer: str) -> dict[str, Any]:
    """The schema of `{layer: {arg: value}}`'s argument mapping for one catalogue layer."""
    kind = get_layer(layer)
    args: type[BaseModel] = kind.Args
    return {
        "type": ["object", "null"],
        "description": kind.summary,
        "properties": {a: _arg_schema(a, f) for a, f in args.model_fields.items()},
        "required": [a for a, f in args.model_fields.items() if f.is_required()],
        "additionalProperties": False,
    }


def module_schema() -> dict[str, Any]:
    """A module entry: exactly one catalogue layer, optionally `if: <expression>`."""
    layers = catalogue_names()
    return {
        "type": "object",
        "description": "{catalogue_layer: {arg: value}}, optionally with `if: <expression>` "
        "(the module exists only where it holds)",
        "propertyNames": {"enum": [MODULE_IF, *layers]},
        "properties": {
            MODULE_IF: {
                "type": ["string", "boolean"],
                "description": "Expression over config names (and `i` in the layer stack): "
                "the module exists only where it holds",
            },
            **{layer: {"$ref": f"#/$defs/layer_{layer}"} for layer in layers},
        },
        "minProperties": 1,
        "not": {"required": [MODULE_IF], "maxProperties": 1},
        "oneOf": [{"required": [layer]} for layer in layers],
    }


def _relax(node: Any) -> Any:
    """An override's schema: nothing required, `null` allowed everywhere (it deletes the key)."""
    if isinstance(node, list):
        return [_relax(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _relax(v) for k, v in node.items() if k not in ("required", "minProperties", "minItems", "not")}
    if "$ref" in out:
        out["$ref"] = out["$ref"] + PARTIAL
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: {"anyOf": [v, {"type": "null"}]} for k, v in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = {"anyOf": [out["additionalProperties"], {"type": "null"}]}
    if isinstance(out.get("patternProperties"), dict):
        out["patternProperties"] = {k: {"anyOf": [v, {"type": "null"}]} for k, v in out["patternProperties"].items()}
    if "oneOf" in out:
        # exactly-one choices become any-of: an override may name only the keys it changes
        alternatives = out.pop("oneOf")
        if not all(set(o) == {"required"} for o in node["oneOf"]):
            out["anyOf"] = alternatives
    return out


def _close_maps(node: Any) -> None:
    """A pydantic `dict[Identifier, X]` gives `patternProperties` only; keys that are not identifiers
    are errors in the spec language too, so the schema says so."""
    if isinstance(node, list):
        for n in node:
            _close_maps(n)
    elif isinstance(node, dict):
        if "patternProperties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            _close_maps(v)


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (draft 2020-12)."""
    schema = Spec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.pop("$defs", {})
    module = {"$ref": "#/$defs/module"}
    for model in ("Model", "LayerStack"):
        modules = defs[model]["properties"]["modules"]
        modules["patternProperties"] = {pattern: module for pattern in modules["patternProperties"]}
    _close_maps(schema)
    _close_maps(defs)
    defs["module"] = module_schema()
    for layer in catalogue_names():
        defs[f"layer_{layer}"] = layer_schema(layer)
    rope = defs.get("RopeSource")
    if rope is not None:
        rope["description"] = (
            rope.get("description", "") + " Supported HF rope types: " + ", ".join(SUPPORTED_ROPE_TYPES) + "."
        ).strip()
    defs["Spec"] = schema
    for name in list(defs):
        defs[name + PARTIAL] = _relax(copy.deepcopy(defs[name]))
    spec_override = defs["Spec" + PARTIAL]
    spec_override["properties"]["extends"] = {"type": "string", "description": Spec.model_fields["extends"].description}
    spec_override["required"] = ["extends"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "minisgl-decl spec",
        "description": schema.get("description", ""),
        "$defs": defs,
        "if": {"type": "object", "required": ["extends"]},
        "then": {"$ref": "#/$defs/Spec" + PARTIAL},
        "else": {"$ref": "#/$defs/Spec"},
    }
