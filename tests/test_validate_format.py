"""`validate --format text|json|github`: the same problems, for people, tools and GitHub Actions."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from minisgl_decl.cli.report_format import github_annotation
from minisgl_decl.errors import Location, Problem

ROOT = Path(__file__).resolve().parents[1]
BAD = ROOT / "tests" / "specs" / "bad"


def _validate(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minisgl_decl.cli.main", "validate", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_json_lists_each_error_with_its_location() -> None:
    run = _validate("--format", "json", str(BAD / "unknown_layer.yaml"), str(ROOT / "specs" / "llama.yaml"))
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    assert doc["checked"] == 2 and doc["valid"] == 1 and doc["errors"] == 1
    bad, good = doc["files"]
    assert good == {"file": str(ROOT / "specs" / "llama.yaml"), "ok": True, "errors": []}
    (err,) = bad["errors"]
    assert (err["line"], err["column"]) == (32, 19) and "unknown layer `rmsnrom`" in err["message"]


def test_github_annotations_match_the_text_output() -> None:
    text = _validate(str(BAD))
    github = _validate("--format", "github", str(BAD))
    assert text.returncode == github.returncode == 1
    located = re.findall(r"^(.+?):(\d+):(\d+): error: (.*)$", text.stdout, re.M)
    annotations = re.findall(r"^::error file=(.+?),line=(\d+),col=(\d+)::(.*)$", github.stdout, re.M)
    assert located and len(annotations) == len(located)
    assert [a[:3] for a in annotations] == [t[:3] for t in located]


def test_github_escapes_newlines_and_property_separators() -> None:
    line = github_annotation(Problem(Location("a,b:c.yaml", 3, 4), "first\nsecond 100%"))
    assert line == "::error file=a%2Cb%3Ac.yaml,line=3,col=4::first%0Asecond 100%25"


def test_valid_specs_pass_in_every_format() -> None:
    for fmt in ("text", "json", "github"):
        run = _validate("--format", fmt, str(ROOT / "specs" / "qwen3.yaml"))
        assert run.returncode == 0, (fmt, run.stdout, run.stderr)
        assert "::error" not in run.stdout


def test_pre_commit_hook_runs_the_project_script_on_spec_files() -> None:
    import tomllib

    import yaml

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    program, command = hook["entry"].split()
    assert program in scripts and command == "validate"
    assert re.search(hook["files"], "specs/llama.yaml") and not re.search(hook["files"], "README.md")
