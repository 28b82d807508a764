"""Draft a spec for a checkpoint from its config.json and tensor names (`minisgl-decl new`).

Nothing here knows an architecture: every candidate comes from the specs in the spec
directories. Each spec is scored against the checkpoint by

1. whether it serves the config's `architectures` (or `model_type`) and its `requires:` hold;
2. how well its weight rules' checkpoint-key patterns cover the checkpoint's tensor names
   (both ways: tensors no rule reads, rule keys no tensor has) — skipped for a bare config.json,
   where HF naming is assumed;
3. how many of the HF config keys its `config:` entries read are present.

The draft is `extends: <closest spec>` plus `name`/`serves` for this checkpoint and its
small `example_config` re-labelled for this architecture; what the closest spec does not explain is listed as `# TODO`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from .find import load_spec_set, serves_architecture, unmet_requirements
from .ir import FromHF, SpecIR
from .rules import WeightRule

_INDEX = re.compile(r"\\\{[ie]\\\}")


@dataclass(frozen=True)
class Checkpoint:
    config: dict[str, Any]
    tensors: list[str] | None  # None: only a config.json was given


@dataclass
class Match:
    spec: SpecIR
    serves: bool
    requires_ok: bool
    unread: list[str] = field(default_factory=list)  # checkpoint tensors no rule reads
    missing: list[str] = field(default_factory=list)  # rule keys no tensor has
    config_missing: list[str] = field(default_factory=list)  # HF keys the spec reads, absent here
    config_total: int = 0

    def score(self) -> tuple[float, ...]:
        cfg = 1 - len(self.config_missing) / max(self.config_total, 1)
        return (
            float(self.serves and self.requires_ok),
            float(self.requires_ok),
            -float(len(self.unread) + len(self.missing)),
            cfg,
        )


def read_checkpoint(source: str | Path) -> Checkpoint:
    """A checkpoint directory (config.json + *.safetensors headers) or a bare config.json."""
    path = Path(source)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise UserError(f"{config_path}: no such file (give a checkpoint directory or its config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not a readable JSON config ({exc})") from exc
    if not isinstance(config, dict):
        raise UserError(f"{config_path}: a config.json is a JSON object")
    if not path.is_dir():
        return Checkpoint(config, None)
    from safetensors import safe_open

    tensors: list[str] = []
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            tensors += list(handle.keys())
    return Checkpoint(config, sorted(tensors) if tensors else None)


def _rule_keys(rule: WeightRule) -> list[tuple[str, bool]]:
    """(checkpoint key pattern, required) of a weight rule; a source the rule may be tied away from is optional."""
    optional = rule.tied_to is not None and len(rule.sources) == 1
    out = [(s.key, not optional) for s in rule.sources]
    return out + ([(rule.tied_to.key, True)] if rule.tied_to is not None else [])


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(_INDEX.sub(r"\\d+", re.escape(key)) + "$")


def match_spec(spec: SpecIR, ckpt: Checkpoint) -> Match:
    m = Match(spec, serves_architecture(spec, ckpt.config), not unmet_requirements(spec, ckpt.config))
    hf_keys = [k for e in spec.config.values() if isinstance(e.source, FromHF) for k in e.source.keys]
    m.config_total = len(hf_keys)
    m.config_missing = [k for k in hf_keys if k.split(".")[0] not in ckpt.config]
    if ckpt.tensors is None:
        return m
    keys = [kr for rule in spec.weights.rules for kr in _rule_keys(rule)]
    readers = [_pattern(k) for k, _ in keys] + [_pattern(k) for k in spec.weights.ignore_patterns]
    m.unread = [t for t in ckpt.tensors if not any(p.match(t) for p in readers)]
    m.missing = sorted(
        {
            k
            for k, required in keys
            if required and k.endswith("weight") and not any(_pattern(k).match(t) for t in ckpt.tensors)
        }
    )
    return m


def rank_specs(ckpt: Checkpoint, dirs: list[Path]) -> list[Match]:
    specs = load_spec_set(dirs).specs
    if not specs:
        raise UserError(f"no loadable specs in {', '.join(map(str, dirs))}")
    return sorted((match_spec(s, ckpt) for s in specs), key=lambda m: m.score(), reverse=True)


def _name(out: Path, config: Mapping[str, Any]) -> str:
    raw = out.stem if out.stem else str(config.get("model_type") or "draft")
    name = re.sub(r"[^A-Za-z0-9_]", "_", raw)
    return name if name[:1].isalpha() else f"m_{name}"


def draft_spec(ckpt: Checkpoint, out: Path, dirs: list[Path]) -> tuple[str, Match]:
    """The YAML text of a draft spec written to `out`, and the match it extends."""
    best = rank_specs(ckpt, dirs)[0]
    parent = Path(best.spec.file).resolve()
    rel = os.path.relpath(parent, out.resolve().parent)
    # a name in the same directory; a relative path nearby; else absolute (a draft in /tmp)
    extends = parent.stem if rel == parent.name else rel if rel.count("..") <= 2 else str(parent)
    archs = [str(a) for a in ckpt.config.get("architectures") or []]
    model_type = ckpt.config.get("model_type")
    lines = [
        f"# Drafted by `minisgl-decl new` from {'a checkpoint' if ckpt.tensors is not None else 'a config.json'}:",
        f"# closest spec `{best.spec.name}` ({parent.name}). Check it with `minisgl-decl check {out}"
        + (" --model DIR`." if ckpt.tensors is None else "`."),
        "spec_version: 1",
        f"extends: {extends}",
        f"name: {_name(out, ckpt.config)}",
        f"description: {best.spec.description or 'Drafted from ' + best.spec.name}",
    ]
    todos: list[str] = []
    if not archs:
        todos.append("the config names no `architectures`: fill in serves.architectures")
    if not best.serves:
        todos.append(
            f"`{best.spec.name}` does not serve {archs or model_type}: compare its modules with the HF modeling file"
        )
    if not best.requires_ok:
        todos.append(f"`{best.spec.name}`'s requires: do not hold for this config")
    if best.unread:
        todos.append(
            "checkpoint tensors no weight rule reads (add rules or `weights.ignore`): "
            + ", ".join(best.unread[:8])
            + (" ..." if len(best.unread) > 8 else "")
        )
    if best.missing:
        todos.append("weight rules whose tensors the checkpoint lacks: " + ", ".join(best.missing[:8]))
    if best.config_missing:
        todos.append(
            "HF config keys the spec reads that are absent (their defaults apply): " + ", ".join(best.config_missing)
        )
    if ckpt.tensors is None:
        todos.append("tensor names not checked (config.json only): HF naming assumed")
    lines += [f"# TODO: {t}" for t in todos]
    serves = {"architectures": archs or ["TODO"]}
    if model_type:
        serves["model_types"] = [str(model_type)]
    lines.append(yaml.safe_dump({"serves": serves}, sort_keys=False, default_flow_style=None).rstrip())
    # not the checkpoint's own config: `check` without --model would build a model of its full size
    example = {k: ckpt.config[k] for k in ("architectures", "model_type") if k in ckpt.config}
    if example:
        lines.append(
            f"# `compile`/`check` without --model: {best.spec.name}'s small example_config as this "
            "architecture.\n# TODO: add the config keys this architecture has that it lacks"
        )
        lines.append(yaml.safe_dump({"example_config": example}, sort_keys=False, default_flow_style=None).rstrip())
    return "\n".join(lines) + "\n", best
