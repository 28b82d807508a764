"""Random mutations of a valid spec give a valid spec or located errors, never a crash."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from _helpers import SPECS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minisgl_decl.errors import SpecError
from minisgl_decl.spec.load import load_spec_text
from minisgl_decl.validate import check_loaded

BASE = yaml.safe_load((SPECS / "qwen3.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "hidden",
            "heads // 0",
            "x.y",
            "__import__('os')",
            "[i for i in range(layers)]",
            "'silu'",
            "rmsnorm",
            "attention",
            "h = attn(x)",
            "{i}",
            "",
            "layers.{i}.attn.qkv.weight",
            "1e9999",
            "hidden ** 99999",
            "range(10**9)",
        ]
    ),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple, action: str, value: Any, key: str) -> Any:
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "rename" and isinstance(parent, dict):
        parent[key or "k"] = parent.pop(last)
    elif action == "insert" and isinstance(parent[last], dict):
        parent[last][key or "k"] = value
    return doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_never_crash(data: st.DataObject) -> None:
    doc = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "rename", "insert"]))
        doc = _mutate(doc, path, action, data.draw(values), data.draw(st.text(max_size=8)))
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        loaded = load_spec_text(text, "mutant.yaml")
    except SpecError as exc:
        problems = exc.problems
    else:
        problems = check_loaded(loaded)
    n_lines = text.count("\n") + 1
    for p in problems:
        assert p.location.file == "mutant.yaml"
        assert 1 <= p.location.line <= n_lines + 1 and p.location.column >= 1
        assert p.message
