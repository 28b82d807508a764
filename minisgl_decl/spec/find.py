"""Choose a spec for a checkpoint from its config.json `architectures` / `model_type`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SpecError, UserError
from .load import load_spec
from .loaded import LoadedSpec


def default_spec_dirs() -> list[Path]:
    """./specs, then the specs/ folder next to the package (editable installs and checkouts)."""
    here = Path(__file__).resolve().parents[2] / "specs"
    return [d for d in (Path.cwd() / "specs", here) if d.is_dir()]


def _loadable_specs(dirs: list[Path]) -> list[LoadedSpec]:
    specs = []
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            try:
                specs.append(load_spec(path))
            except SpecError:
                continue  # `validate` reports broken specs; they serve nothing here
    return specs


def find_spec(hf_config: Mapping[str, Any], dirs: list[Path] | None = None) -> LoadedSpec:
    """The first spec serving one of the config's `architectures` (else its `model_type`)."""
    archs = set(hf_config.get("architectures") or [])
    model_type = hf_config.get("model_type")
    searched = dirs if dirs is not None else default_spec_dirs()
    specs = _loadable_specs(searched)
    for spec in specs:
        if archs & set(spec.spec.serves.architectures):
            return spec
    for spec in specs:
        if not archs and model_type in spec.spec.serves.model_types:
            return spec
    seen = sorted({a for spec in specs for a in spec.spec.serves.architectures})
    raise UserError(
        f"no spec serves {', '.join(sorted(archs)) or model_type or '(no architectures in config.json)'}; "
        f"searched {', '.join(map(str, searched)) or '(no specs/ directory)'} (serving: {', '.join(seen)}); "
        "pass --spec"
    )
