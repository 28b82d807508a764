"""Golden error files: each bad spec yields exactly the expected located errors.

Expected positions are not recorded from our output: each case names the offending
token, and the test finds that token's line and column in the file independently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import SPECS

from minisgl_decl.validate import validate_file

BAD = Path(__file__).resolve().parent / "specs" / "bad"

# file -> [(line containing, token whose first character is the error column, message fragment)]
GOLDEN: dict[str, list[tuple[str, str, str]]] = {
    "unknown_layer.yaml": [("attn_norm: {rmsnrom", "rmsnrom", "unknown layer `rmsnrom`; did you mean `rmsnorm`?")],
    "undefined_config_name.yaml": [("ffn: ffn_size", "ffn_size", "undefined config name `ffn_size`")],
    "expr_syntax.yaml": [("hidden // * heads", "* heads", "expression syntax error")],
    "rule_no_param.yaml": [("attn.out.weight", "layers.{i}.attn.out.weight", "produces no parameter")],
    "unknown_key.yaml": [
        ("serve:", "serve:", "unknown key `serve`; did you mean `serves`?"),
        ("spec_version", "spec_version", "missing required key `serves`"),
    ],
    "bad_statement.yaml": [("h = mlp(mlpnorm(x))", "mlpnorm", "unknown module `mlpnorm`")],
    "unsafe_expr.yaml": [("__import__", "__import__", "is not allowed")],
    "bad_arg.yaml": [("activation: act", "activation", "`gated_mlp` has no argument `activation`")],
    "config_entry_kind.yaml": [("form: vocab_size", "{form", "needs exactly one of `from`, `expr`")],
    "yaml_syntax.yaml": [("heads:     {from: num_attention_heads, type: int", "heads:", "YAML syntax error")],
}


def _position(path: Path, line_has: str, token: str) -> tuple[int, int]:
    lines = path.read_text().splitlines()
    matches = [i for i, text in enumerate(lines) if line_has in text]
    assert len(matches) == 1, f"ambiguous fixture: {line_has!r} in {path.name}"
    i = matches[0]
    return i + 1, lines[i].index(token) + 1


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bad_spec_reports_located_errors(name: str) -> None:
    path = BAD / name
    problems = validate_file(path)
    assert problems, f"{name} unexpectedly validated"
    got = {(p.location.line, p.location.column): p.message for p in problems}
    for line_has, token, fragment in GOLDEN[name]:
        line, col = _position(path, line_has, token)
        if "YAML syntax" in fragment:  # the parser reports where it noticed the problem: same line or next
            assert any(ln in (line, line + 1) and fragment in m for (ln, _), m in got.items()), got
            continue
        assert (line, col) in got, f"expected an error at {line}:{col}, got {sorted(got)}: {got}"
        assert fragment in got[(line, col)]
    assert len(problems) == len(GOLDEN[name]), [str(p) for p in problems]
    assert all(p.location.file == str(path) for p in problems)


def test_every_bad_fixture_has_expectations() -> None:
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(GOLDEN)


def test_all_shipped_specs_validate() -> None:
    for spec in sorted(SPECS.glob("*.yaml")):
        assert validate_file(spec) == [], spec


def test_validate_cli_reports_all_errors_and_exit_status(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "validate", str(SPECS)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    n = len(list(SPECS.glob("*.yaml")))
    assert n >= 6 and f"{n} spec(s) checked, {n} valid, 0 error(s)" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "validate", str(BAD)], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stdout + bad.stderr
    for name in GOLDEN:  # every file's errors are printed, not just the first file's
        assert f"{BAD / name}:" in bad.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "validate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_duplicate_keys_and_cycles_are_located() -> None:
    from minisgl_decl.errors import SpecError
    from minisgl_decl.spec.load import load_spec_text
    from minisgl_decl.validate import check_loaded

    text = (SPECS / "llama.yaml").read_text()
    dup = text.replace(
        "  layers:    {from: num_hidden_layers, type: int}\n",
        "  layers:    {from: num_hidden_layers, type: int}\n  layers: {value: 2}\n",
        1,
    )
    with pytest.raises(SpecError) as exc:
        load_spec_text(dup, "dup.yaml")
    assert "duplicate key `layers`" in str(exc.value)
    cyc = text.replace(
        "head_dim:  {from: head_dim, default: hidden // heads, type: int}",
        "head_dim:  {expr: hidden // heads + ffn2}\n  ffn2: {expr: head_dim * 2}",
    )
    problems = check_loaded(load_spec_text(cyc, "cyc.yaml"))
    assert any("depend on each other" in p.message for p in problems)
    line = cyc.splitlines().index("  ffn2: {expr: head_dim * 2}") + 1
    assert any(p.location.line == line for p in problems)
