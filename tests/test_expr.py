"""The restricted expression evaluator: what it computes and what it refuses."""

from __future__ import annotations

import pytest

from minisgl_decl.spec.expr import ExprError, parse_expr


@pytest.mark.parametrize(
    ("source", "env", "expected"),
    [
        ("hidden // heads", {"hidden": 4096, "heads": 32}, 128),
        ("hidden ** 0.5", {"hidden": 16}, 4.0),
        ("a if a is not None else b", {"a": None, "b": 3}, 3),
        ("max(1, n // 8) * 2", {"n": 20}, 4),
        ("[('s' if (i + 1) % 3 else 'f') for i in range(n)]", {"n": 4}, ["s", "s", "f", "s"]),
        ("types[i] == 'sliding_attention'", {"types": ["full", "sliding_attention"], "i": 1}, True),
        ("not flag and x < 3 <= y", {"flag": False, "x": 1, "y": 3}, True),
        ("'silu'", {}, "silu"),
        ("xs[1:]", {"xs": [1, 2, 3]}, [2, 3]),
    ],
)
def test_evaluates(source: str, env: dict, expected: object) -> None:
    assert parse_expr(source).evaluate(env) == expected


def test_reports_free_names_only() -> None:
    assert parse_expr("[i * k for i in range(n)]").names == {"k", "n"}


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("__import__('os')", "call of `__import__`"),
        ("open('/etc/passwd')", "call of `open`"),
        ("x.__class__", "attribute access"),
        ("hidden.bit_length()", "call of `hidden.bit_length`"),
        ("(lambda: 1)()", "not allowed"),
        ("__builtins__", "may not start with `_`"),
        ("{'a': 1}", "`Dict` is not allowed"),
        ("f'{x}'", "not allowed"),
        ("x := 3", "syntax error"),
        ("max(key=len)", "keyword arguments"),
        ("[y for y in range(3) for z in range(2)]", "one `for`"),
        ("1 +", "syntax error"),
    ],
)
def test_rejects_at_parse_time(source: str, fragment: str) -> None:
    with pytest.raises(ExprError) as exc:
        parse_expr(source)
    assert fragment in exc.value.message


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("2 ** 10 ** 10", "exponent larger"),
        ("[0] * 10 ** 7", "sequence longer"),
        ("range(10 ** 9)", "range() longer"),
        ("missing + 1", "unknown name `missing`"),
        ("1 // 0", "cannot evaluate"),
    ],
)
def test_bounded_evaluation(source: str, fragment: str) -> None:
    with pytest.raises(ExprError) as exc:
        parse_expr(source).evaluate({})
    assert fragment in exc.value.message


def test_error_offset_points_into_source() -> None:
    with pytest.raises(ExprError) as exc:
        parse_expr("hidden // heads.x")
    assert exc.value.offset == len("hidden // ")
