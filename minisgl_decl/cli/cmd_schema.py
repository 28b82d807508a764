"""`minisgl-decl schema`: JSON Schema of the spec language, for editors."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..catalogue import catalogue_names, get_layer
from ..spec.schema import Spec


def spec_json_schema() -> dict[str, Any]:
    """The Spec schema with module entries expanded into one alternative per catalogue layer."""
    schema = Spec.model_json_schema()
    alternatives = []
    for name in catalogue_names():
        kind = get_layer(name)
        props = {}
        for arg, f in kind.Args.model_fields.items():
            props[arg] = {"description": f"{f.annotation}".replace("typing.", ""),
                          "type": ["string", "number", "integer", "boolean", "null", "array", "object"]}
        alternatives.append({
            "type": "object",
            "description": kind.summary,
            "properties": {name: {"type": ["object", "null"], "properties": props, "additionalProperties": False,
                                  "required": [a for a, f in kind.Args.model_fields.items() if f.is_required()]}},
            "required": [name],
            "additionalProperties": False,
        })
    module = {"oneOf": alternatives}
    defs = schema.get("$defs", {})
    for model in ("Model", "LayerStack"):
        if model in defs:
            defs[model]["properties"]["modules"]["additionalProperties"] = module
    schema["$id"] = "https://minisgl-decl/spec.schema.json"
    return schema


def register(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of spec files (for editor completion)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2))
    return 0
