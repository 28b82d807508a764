"""Safe, bounded YAML loading that remembers where every node came from.

The document is composed with PyYAML's SafeLoader (no arbitrary tags, no code) and then
converted to plain Python values while recording the line/column of every key and value,
keyed by its path (a tuple of mapping keys and list indices).

Bounds (see `limits`): the file must be a regular file under MAX_SPEC_BYTES, decoded as
UTF-8 (or UTF-16/32 with a byte-order mark) with a located error otherwise; nesting
deeper than MAX_YAML_DEPTH stops the composer; converting visits at most MAX_YAML_NODES
nodes, counting an alias every time it expands ("billion laughs"), and an alias inside
its own anchor is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import Location, Problem, SpecError, show
from ..limits import hint, limit
from ..safe_files import FileRefused, decode_text, line_col, read_bounded

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


class _Bounded(yaml.SafeLoader):
    """A SafeLoader whose composer refuses nesting deeper than MAX_YAML_DEPTH (before Python's stack does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.depth = 0
        self.max_depth = limit("MAX_YAML_DEPTH")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        self.depth += 1
        try:
            if self.depth > self.max_depth:
                mark = self.peek_event().start_mark
                raise _Refused(
                    mark.line + 1,
                    mark.column + 1,
                    f"nested deeper than {self.max_depth} levels {hint('MAX_YAML_DEPTH')}",
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1


_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class _Refused(Exception):
    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


@dataclass
class _Walk:
    sm: SourceMap
    out: list[Problem]
    budget: int
    max_depth: int
    active: set[int] = field(default_factory=set)  # ids of the nodes being converted (alias cycles)


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: PathKey, w: _Walk) -> Any:
    line, col = _mark(node)
    w.budget -= 1
    if w.budget < 0:
        raise _Refused(
            line,
            col,
            f"the document expands to more than {limit('MAX_YAML_NODES')} nodes "
            f"(aliases count each time they are used) {hint('MAX_YAML_NODES')}",
        )
    if id(node) in w.active:
        raise _Refused(line, col, "recursive alias: an anchor's value refers to itself")
    if len(path) > w.max_depth:
        raise _Refused(line, col, f"nested deeper than {w.max_depth} levels through aliases {hint('MAX_YAML_DEPTH')}")
    if isinstance(node, yaml.CollectionNode) and node.tag not in _COLLECTION_TAGS:
        raise _Refused(
            line, col, f"YAML tag `{show(node.tag, 80)}` is not allowed here (plain mappings and lists only)"
        )
    style = getattr(node, "style", None)
    w.sm.values[path] = (line, col, style)
    if isinstance(node, yaml.MappingNode):
        w.active.add(id(node))
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            kl, kc = _mark(key_node)
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str | int) or isinstance(key, bool):
                what = show(repr(key), 60) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                w.out.append(Problem(Location(w.sm.file, kl, kc), f"mapping keys must be strings, got {what}"))
                continue
            key_path = (*path, key)
            if key in result:
                w.out.append(
                    Problem(Location(w.sm.file, kl, kc), f"duplicate key `{show(key)}`: each key may appear once")
                )
                continue
            w.sm.keys[key_path] = (kl, kc)
            result[key] = _convert(loader, value_node, key_path, w)
        w.active.discard(id(node))
        return result
    if isinstance(node, yaml.SequenceNode):
        w.active.add(id(node))
        items = [_convert(loader, child, (*path, i), w) for i, child in enumerate(node.value)]
        w.active.discard(id(node))
        return items
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, file: str) -> SpecSource:
    """Parse YAML text safely; raise `SpecError` with a location on syntax errors."""
    sm = SourceMap(file=file)
    if len(text) > limit("MAX_SPEC_BYTES"):
        raise SpecError([Problem(Location(file, 1, 1), f"the spec is larger than allowed {hint('MAX_SPEC_BYTES')}")])
    problems: list[Problem] = []
    loader: _Bounded | None = None
    try:
        loader = _Bounded(text)
        node = loader.get_single_node()
        if node is None:
            raise SpecError([Problem(Location(file, 1, 1), "the spec file is empty")])
        data = _convert(loader, node, (), _Walk(sm, problems, limit("MAX_YAML_NODES"), limit("MAX_YAML_DEPTH")))
    except _Refused as exc:
        raise SpecError([Problem(Location(file, exc.line, exc.column), exc.message)]) from None
    except RecursionError:
        raise SpecError([Problem(Location(file, 1, 1), "the document is nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise SpecError([Problem(loc, f"YAML syntax error: {show(exc.problem or exc.context)}")]) from None
    except yaml.reader.ReaderError as exc:
        line, col = _reader_position(text, exc.position)
        raise SpecError(
            [Problem(Location(file, line, col), f"YAML error: {show(exc.reason)} (U+{exc.character:04X})")]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([Problem(Location(file, 1, 1), f"YAML error: {show(exc)}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if problems:
        raise SpecError(problems)
    return SpecSource(data=data, source_map=sm)


def _reader_position(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def load_yaml_file(path: str | Path) -> SpecSource:
    """Read a spec file within the limits (regular file, size, encoding) and parse it."""
    p = Path(path)
    try:
        data = read_bounded(p, "the spec", "MAX_SPEC_BYTES")
    except FileRefused as exc:
        raise SpecError([Problem(Location(str(p), 1, 1), str(exc).removeprefix(f"{show(p)}: "))]) from None
    text, problem, offset = decode_text(data)
    if text is None:
        line, col = line_col(data, offset)
        raise SpecError([Problem(Location(str(p), line, col), problem)])
    return load_yaml(text, str(p))
