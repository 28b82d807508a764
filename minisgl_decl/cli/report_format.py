"""How `validate` prints problems: text for people, JSON for tools, GitHub workflow annotations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Problem

FORMATS = ("text", "json", "github")


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_annotation(problem: Problem) -> str:
    """`::error file=F,line=L,col=C::message` (GitHub Actions workflow command)."""
    loc = problem.location
    return (
        f"::error file={_escape_property(loc.file)},line={loc.line},col={loc.column}::{_escape_data(problem.message)}"
    )


def problem_json(problem: Problem) -> dict[str, object]:
    loc = problem.location
    return {"file": loc.file, "line": loc.line, "column": loc.column, "message": problem.message}


@dataclass
class Reporter:
    """Collects the result of each file and prints in the chosen format."""

    format: str = "text"
    files: list[dict[str, object]] = field(default_factory=list)
    overlaps: list[Problem] = field(default_factory=list)

    def file(self, path: Path, problems: list[Problem]) -> None:
        self.files.append({"file": str(path), "ok": not problems, "errors": [problem_json(p) for p in problems]})
        if self.format == "text":
            for problem in problems:
                print(problem)
            print(f"{'ok  ' if not problems else 'FAIL'} {path}" + (f" ({len(problems)} error(s))" if problems else ""))
        elif self.format == "github":
            for problem in problems:
                print(github_annotation(problem))

    def overlap(self, problems: list[Problem]) -> None:
        self.overlaps += problems
        for problem in problems:
            if self.format == "text":
                print(problem)
            elif self.format == "github":
                print(github_annotation(problem))

    def summary(self) -> int:
        """Print the totals; the number of errors."""
        total = sum(len(f["errors"]) for f in self.files) + len(self.overlaps)  # type: ignore[arg-type]
        valid = sum(1 for f in self.files if f["ok"])
        if self.format == "json":
            print(
                json.dumps(
                    {
                        "files": self.files,
                        "overlaps": [problem_json(p) for p in self.overlaps],
                        "checked": len(self.files),
                        "valid": valid,
                        "errors": total,
                    },
                    indent=2,
                )
            )
        else:
            print(
                f"{len(self.files)} spec(s) checked, {valid} valid, {total} error(s)"
                + (f" ({len(self.overlaps)} overlapping pair(s))" if self.overlaps else "")
            )
        return total
