"""Safe YAML loading that remembers where every node came from.

The document is composed with PyYAML's SafeLoader (no arbitrary tags, no code) and then
converted to plain Python values while recording the line/column of every key and value,
keyed by its path (a tuple of mapping keys and list indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import Location, Problem, SpecError

PathKey = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a loaded YAML document starts."""

    file: str
    values: dict[PathKey, tuple[int, int, str | None]] = field(default_factory=dict)
    keys: dict[PathKey, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: PathKey, *, key: bool = False) -> Location:
        """Location of `path`, or of its nearest existing ancestor."""
        p = tuple(path)
        while True:
            if key and p in self.keys:
                line, col = self.keys[p]
                return Location(self.file, line, col)
            if p in self.values:
                line, col, _ = self.values[p]
                return Location(self.file, line, col)
            if not p:
                return Location(self.file, 1, 1)
            p = p[:-1]

    def locate_in_scalar(self, path: PathKey, offset: int) -> Location:
        """Location of character `offset` inside the scalar at `path` (for expression errors)."""
        base = self.locate(path)
        info = self.values.get(tuple(path))
        quote = 1 if info is not None and info[2] in ("'", '"') else 0
        return Location(base.file, base.line, base.column + quote + offset)


@dataclass
class SpecSource:
    """A loaded YAML document and the positions of its nodes."""

    data: Any
    source_map: SourceMap


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, sm: SourceMap, out: list[Problem]) -> Any:
    line, col = _mark(node)
    style = getattr(node, "style", None)
    sm.values[path] = (line, col, style)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int):
                kl, kc = _mark(key_node)
                out.append(Problem(Location(sm.file, kl, kc), f"mapping keys must be strings, got {key!r}"))
                continue
            key_path = (*path, key)
            if key in result:
                kl, kc = _mark(key_node)
                out.append(Problem(Location(sm.file, kl, kc), f"duplicate key `{key}`: each key may appear once"))
                continue
            sm.keys[key_path] = _mark(key_node)
            result[key] = _convert(loader, value_node, key_path, sm, out)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, child, (*path, i), sm, out) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> SpecSource:
    """Parse YAML text safely; raise `SpecError` with a location on syntax errors."""
    sm = SourceMap(file=file)
    loader = yaml.SafeLoader(text)
    problems: list[Problem] = []
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Problem(Location(file, 1, 1), "the spec file is empty")])
        data = _convert(loader, node, (), sm, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise SpecError([Problem(loc, f"YAML syntax error: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(Location(file, 1, 1), f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if problems:
        raise SpecError(problems)
    return SpecSource(data=data, source_map=sm)


def load_yaml_file(path: str | Path) -> SpecSource:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([Problem(Location(str(p), 1, 1), f"cannot read spec: {exc.strerror}")]) from None
    return load_yaml(text, str(p))
