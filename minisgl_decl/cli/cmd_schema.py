"""`minisgl-decl schema`: JSON Schema of the spec language, for editors and CI."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..spec.json_schema import spec_json_schema


def register(sub: Any) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of spec files (for editor completion and CI)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2))
    return 0
