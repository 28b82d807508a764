"""`minisgl-decl validate PATH...`: check spec files, print every error, exit 1 on any."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecError, UserError, show
from ..spec.compile import load_ir
from ..spec.find import overlapping_specs
from ..validate import validate_file
from .report_format import FORMATS, Reporter


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="validate spec files or directories of specs")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a spec .yaml file or a directory of them")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (default), json (one document), github (workflow ::error annotations)",
    )
    p.set_defaults(run=run)


def spec_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml"))
        elif p.exists():
            files.append(p)  # not a regular file: reported by the loader, without opening it
        else:
            raise UserError(f"{show(p)}: no such file or directory")
    if not files:
        raise UserError(f"no .yaml specs found in {', '.join(paths)}")
    return files


def run(args: argparse.Namespace) -> int:
    files = spec_files(args.paths)
    report = Reporter(args.format)
    valid: list[Path] = []
    for f in files:
        problems = validate_file(f)
        report.file(f, problems)
        if not problems:
            valid.append(f)
    report.overlap(overlap_problems(valid))
    return 1 if report.summary() else 0


def overlap_problems(files: list[Path]) -> list[Problem]:
    """Pairs of valid specs that could serve the same checkpoint (see `overlapping_specs`)."""
    specs = []
    for f in files:
        try:
            specs.append(load_ir(f))
        except SpecError:
            continue  # reported above by validate_file
    return [Problem(b.serves_at, why) for _, b, why in overlapping_specs(specs)]
