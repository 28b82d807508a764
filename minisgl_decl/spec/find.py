"""Choose a spec for a checkpoint from its config.json: `architectures` / `model_type`, then `requires:`.

A spec is a candidate when it serves one of the config's `architectures` (or, when the
config names none, its `model_type`); the first candidate whose `requires:` hold for the
config is chosen. Specs that fail to load are never skipped silently: they are named in
the error when nothing matches, and logged when something else was chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import SpecError, UserError
from .compile import load_ir
from .ir import SpecIR

log = logging.getLogger(__name__)


def default_spec_dirs() -> list[Path]:
    """./specs, then the specs/ folder next to the package (editable installs and checkouts)."""
    here = Path(__file__).resolve().parents[2] / "specs"
    return [d for d in (Path.cwd() / "specs", here) if d.is_dir()]


@dataclass(frozen=True)
class SpecSet:
    """The specs found in some directories: those that load, and those that do not (with why)."""

    specs: list[SpecIR]
    broken: list[tuple[Path, SpecError]]


def load_spec_set(dirs: list[Path]) -> SpecSet:
    specs: list[SpecIR] = []
    broken: list[tuple[Path, SpecError]] = []
    seen: set[Path] = set()
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                specs.append(load_ir(path))
            except SpecError as exc:
                broken.append((path, exc))
    return SpecSet(specs, broken)


def serves_architecture(spec: SpecIR, hf_config: Mapping[str, Any]) -> bool:
    """Does the spec serve one of the config's `architectures` (or its `model_type` if it names none)?"""
    archs = set(hf_config.get("architectures") or [])
    if archs:
        return bool(archs & set(spec.architectures))
    return hf_config.get("model_type") in spec.model_types


def unmet_requirements(spec: SpecIR, hf_config: Mapping[str, Any]) -> list[str]:
    """Why the spec's `requires:` rule this config out (empty: they hold).

    Only the config names the requirements read (and what those depend on) are resolved,
    so a partial config.json is judged on what the requirements actually need.
    """
    if not spec.requires:
        return []
    from ..config.resolve import resolve_config

    entries = spec.config
    needed: set[str] = set()
    todo = sorted({n for req in spec.requires for n in req.names} & set(entries))
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += sorted(entries[name].reads & set(entries))
    narrowed = replace(spec, config={n: e for n, e in entries.items() if n in needed})
    try:
        resolve_config(narrowed, hf_config)
    except SpecError as exc:
        return [p.message for p in exc.problems]
    return []


def _broken_note(broken: list[tuple[Path, SpecError]]) -> str:
    if not broken:
        return ""
    lines = [f"  {path}: {exc.problems[0] if exc.problems else exc}" for path, exc in broken]
    return f"; {len(broken)} spec(s) could not be loaded (run `minisgl-decl validate`):\n" + "\n".join(lines)


def find_spec(hf_config: Mapping[str, Any], dirs: list[Path] | None = None) -> SpecIR:
    """The first spec serving the config's architecture whose `requires:` hold for it."""
    archs = sorted(set(hf_config.get("architectures") or []))
    wanted = ", ".join(archs) or str(hf_config.get("model_type") or "(no architectures in config.json)")
    searched = dirs if dirs is not None else default_spec_dirs()
    found = load_spec_set(searched)
    rejected: list[str] = []
    for spec in found.specs:
        if not serves_architecture(spec, hf_config):
            continue
        reasons = unmet_requirements(spec, hf_config)
        if not reasons:
            for path, exc in found.broken:
                log.warning("spec %s could not be loaded and was not considered: %s", path, exc.problems[0])
            return spec
        rejected.append(f"  {spec.file}: " + "; ".join(reasons))
    if rejected:
        raise UserError(
            f"no spec can serve this {wanted} checkpoint: every spec for it has `requires:` that rule it out:\n"
            + "\n".join(rejected)
            + _broken_note(found.broken)
            + "\npass --spec"
        )
    seen = sorted({a for spec in found.specs for a in spec.architectures})
    raise UserError(
        f"no spec serves {wanted}; "
        f"searched {', '.join(map(str, searched)) or '(no specs/ directory)'} (serving: {', '.join(seen)})"
        + _broken_note(found.broken)
        + "; pass --spec"
    )


def overlapping_specs(specs: list[SpecIR]) -> list[tuple[SpecIR, SpecIR, str]]:
    """Pairs of specs that could both serve one checkpoint: (spec, other, why).

    What is checked: for every ordered pair (A, B) of different specs, A's `example_config`
    is a checkpoint config that A itself accepts; if B serves its architecture (`serves_architecture`) and B's
    `requires:` hold for it (`unmet_requirements` is empty), then A and B overlap — one
    real checkpoint (A's example) would be claimed by both, and `find_spec` would pick
    whichever comes first. Specs whose example configs are disjoint under each other's
    `requires:` (say, a dense and an MoE spec for one architecture) do not overlap.
    """
    found: list[tuple[SpecIR, SpecIR, str]] = []
    reported: set[frozenset[str]] = set()
    for a in specs:
        example = a.example_config
        if not example or unmet_requirements(a, example):
            continue  # no example, or one its own spec refuses (validate reports that on its own)
        for b in specs:
            if b is a or a.file == b.file or not serves_architecture(b, example):
                continue
            pair = frozenset((a.file, b.file))
            if pair in reported or unmet_requirements(b, example):
                continue
            reported.add(pair)
            archs = ", ".join(sorted(set(example.get("architectures") or [])) or [str(example.get("model_type"))])
            found.append(
                (
                    a,
                    b,
                    f"spec `{a.name}` ({a.file}) and spec `{b.name}` ({b.file}) could both "
                    f"serve {archs}: `{b.name}`'s requires hold for `{a.name}`'s example_config; "
                    "add `requires:` to one of them that rules out the other's checkpoints",
                )
            )
    return found
