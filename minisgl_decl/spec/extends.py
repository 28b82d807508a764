"""`extends:` — a spec written as another spec plus overrides.

`extends: llama` (a name: `llama.yaml` in the same directory) or `extends: ../base/x.yaml`
(a path relative to the spec's directory). The parent is loaded (its own `extends:`
first), then the child is merged over it:

- mappings merge key by key, recursively;
- anything else (lists, scalars) replaces the parent's value;
- `key: null` deletes a key the parent has (a null for a key the parent lacks stays null).

Every node of the result keeps the location of the file that set it, so errors in an
inherited value point at the parent's line and errors in an override at the child's.
A chain that comes back to a file already in it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Location, Problem, SpecError
from .yaml_source import PathKey, SourceMap, SpecSource, load_yaml_file

EXTENDS = "extends"


@dataclass
class LayeredSourceMap(SourceMap):
    """A `SourceMap` whose nodes come from several files (`files[path]`; default `file`)."""

    files: dict[PathKey, str] = field(default_factory=dict)

    def locate(self, path: PathKey, *, key: bool = False) -> Location:
        p = tuple(path)
        while True:
            if key and p in self.keys:
                line, col = self.keys[p]
                return Location(self.files.get(p, self.file), line, col)
            if p in self.values:
                line, col, _ = self.values[p]
                return Location(self.files.get(p, self.file), line, col)
            if not p:
                return Location(self.file, 1, 1)
            p = p[:-1]


def _file_of(sm: SourceMap, path: PathKey) -> str:
    return sm.files.get(path, sm.file) if isinstance(sm, LayeredSourceMap) else sm.file


def _copy_node(src: SourceMap, path: PathKey, out: LayeredSourceMap) -> None:
    if path in src.values:
        out.values[path] = src.values[path]
        out.files[path] = _file_of(src, path)
    if path in src.keys:
        out.keys[path] = src.keys[path]


def _copy_subtree(src: SourceMap, path: PathKey, out: LayeredSourceMap) -> None:
    n = len(path)
    for p in [*src.values, *src.keys]:
        if p[:n] == path:
            _copy_node(src, p, out)


def _merge(base: Any, base_sm: SourceMap, over: Any, over_sm: SourceMap, path: PathKey, out: LayeredSourceMap) -> Any:
    if not (isinstance(base, dict) and isinstance(over, dict)):
        _copy_subtree(over_sm, path, out)
        return over
    _copy_node(over_sm, path, out)
    result: dict[Any, Any] = {}
    for k, v in base.items():
        if k not in over:
            result[k] = v
            _copy_subtree(base_sm, (*path, k), out)
        elif over[k] is None:
            continue  # deleted by the child
        else:
            result[k] = _merge(v, base_sm, over[k], over_sm, (*path, k), out)
    for k, v in over.items():
        if k not in base:
            result[k] = v
            _copy_subtree(over_sm, (*path, k), out)
    return result


def _parent_path(name: str, here: Path) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        return here.parent / name
    return here.parent / f"{name}.yaml"


def resolve_extends(src: SpecSource, path: Path, chain: tuple[Path, ...] = ()) -> SpecSource:
    """`src` (loaded from `path`) with its `extends:` chain merged in; unchanged without one."""
    data = src.data
    if not isinstance(data, dict) or EXTENDS not in data:
        return src
    where = src.source_map.locate((EXTENDS,))
    name = data[EXTENDS]
    if not isinstance(name, str) or not name:
        raise SpecError([Problem(where, "`extends` names a spec: a name in this directory (`llama`) or a path")])
    me = path.resolve()
    parent_path = _parent_path(name, path)
    if parent_path.resolve() in (*chain, me):
        loop = " -> ".join(p.name for p in (*chain, me, parent_path))
        raise SpecError([Problem(where, f"`extends` goes round in a circle: {loop}")])
    if not parent_path.is_file():
        raise SpecError(
            [
                Problem(
                    where,
                    f"`extends: {name}`: no spec at {parent_path}; name a spec in "
                    f"{path.parent} (without .yaml) or give a path relative to it",
                )
            ]
        )
    parent = resolve_extends(load_yaml_file(parent_path), parent_path, (*chain, me))
    out = LayeredSourceMap(file=src.source_map.file)
    merged = _merge(parent.data, parent.source_map, data, src.source_map, (), out)
    return SpecSource(data=merged, source_map=out)
