"""The three kinds of error: located spec errors, user errors, and (uncaught) internal bugs.

`SpecError` and `UserError` are shown to people without a traceback by the CLI; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a spec file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, at one place."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: error: {self.message}"


class UserError(Exception):
    """A mistake in user input (checkpoint, command line, request): shown without a traceback."""


class SpecError(UserError):
    """One or more located problems in a spec file."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = sorted(
            problems, key=lambda p: (p.location.file, p.location.line, p.location.column)
        )
        super().__init__("\n".join(str(p) for p in self.problems))


def closest(name: str, options: Iterable[str]) -> str:
    """A 'did you mean' hint listing what exists (closest first)."""
    import difflib

    opts = sorted(set(options))
    near = difflib.get_close_matches(name, opts, n=1)
    listing = ", ".join(opts) if opts else "(none)"
    if near:
        return f"did you mean `{near[0]}`? known: {listing}"
    return f"known: {listing}"


def show(text: object, limit: int = 200) -> str:
    """User text made safe for one line of a message: control characters escaped, long text cut."""
    s = str(text)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[:limit])
    return out + ("…" if len(s) > limit else "")
