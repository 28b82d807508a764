"""Resource limits on untrusted input (specs, expressions, checkpoints), in one place.

Each limit can be raised for one process with an environment variable
`MINISGL_DECL_<NAME>` (e.g. `MINISGL_DECL_MAX_SPEC_BYTES=4194304`); `docs/security.md`
lists them. A limit that is hit gives a clear error naming the variable.
"""

from __future__ import annotations

import os

_DEFAULTS: dict[str, int] = {
    "MAX_SPEC_BYTES": 1 << 20,  # a spec file (real specs are a few KiB)
    "MAX_YAML_DEPTH": 64,  # nesting of mappings/sequences in a spec
    "MAX_YAML_NODES": 50_000,  # nodes visited while loading, aliases counted each time they expand
    "MAX_EXPR_STEPS": 200_000,  # evaluation steps of one expression (incl. comprehension iterations)
    "MAX_EXPR_DEPTH": 64,  # nesting depth of one expression's syntax tree
    "MAX_EXPR_SIZE": 1_000_000,  # size of any value an expression builds (list items, characters)
    "MAX_INT_BITS": 4096,  # bit length of any integer an expression builds
    "MAX_JSON_BYTES": 64 << 20,  # config.json, model.safetensors.index.json
    "MAX_HEADER_BYTES": 100 << 20,  # one safetensors JSON header
    "MAX_RANDOM_PARAMS": 50_000_000,  # parameters of the tiny random model `check` builds without --model
}


def limit(name: str) -> int:
    """The limit `name`, or its override from `MINISGL_DECL_<name>` when that is a positive integer."""
    raw = os.environ.get(f"MINISGL_DECL_{name}")
    if raw is not None and raw.strip().isdigit() and int(raw) > 0:
        return int(raw)
    return _DEFAULTS[name]


def hint(name: str) -> str:
    return f"(limit {limit(name)}; raise it with MINISGL_DECL_{name})"
