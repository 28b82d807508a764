"""Load a spec file: safe YAML with positions -> pydantic `Spec`, errors located."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import Problem, SpecError, show
from .extends import resolve_extends
from .loaded import LoadedSpec
from .schema import SPEC_VERSION, Spec
from .yaml_source import PathKey, SourceMap, load_yaml, load_yaml_file


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith("<") or "[" in part)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that the (tag-free) `loc` points into, if any."""
    current: Any = Spec
    for part in loc:
        current = _unwrap(current, part)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any, part: Any) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, f in tp.model_fields.items():
            if part in (name, f.alias):
                return f.annotation
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _unwrap(args[0], part)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            found = _unwrap(a, part)
            if found is not None:
                return found
        return None
    if origin is dict:
        return args[1]
    if origin is list and isinstance(part, int):
        return args[0]
    return None


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _friendly(err: dict[str, Any], loc: PathKey) -> tuple[str, bool]:
    """(message, point_at_key) for one pydantic error, chosen by its type."""
    kind = err["type"]
    last = loc[-1] if loc else "(top)"
    if kind == "missing":
        model = _model_at(loc[:-1])
        hint = f" (keys here: {', '.join(_allowed_keys(model))})" if model else ""
        return f"missing required key `{last}`{hint}", False
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        from ..errors import closest

        hint = closest(str(last), _allowed_keys(model)) if model else ""
        return f"unknown key `{show(last)}`; {hint}".rstrip("; "), True
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"`{last}` = {err.get('input')!r} is not allowed; expected {expected}", False
    if kind == "string_pattern_mismatch":
        return f"`{show(err.get('input'))}` is not a valid name (letters, digits and _; starts with a letter)", False
    if kind in ("config_field_kind", "weight_rule_kind", "weight_source_kind"):
        return err["msg"], False
    if kind == "too_short":
        return f"`{last}` must not be empty", False
    return f"`{show(last)}`: {err['msg']} (got {show(repr(err.get('input')), 120)})", False


def validate_document(data: Any, source_map: SourceMap) -> LoadedSpec:
    if isinstance(data, dict) and data.get("spec_version") not in (None, SPEC_VERSION):
        raise SpecError(
            [
                Problem(
                    source_map.locate(("spec_version",)),
                    f"spec_version {data['spec_version']!r} is not supported; this tool reads {SPEC_VERSION}",
                )
            ]
        )
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = []
        seen = set()
        for err in exc.errors():
            loc: PathKey = tuple(p for p in err["loc"] if not _is_tag(p))
            message, at_key = _friendly(err, loc)
            where = source_map.locate(loc, key=at_key)
            if (where, message) not in seen:
                seen.add((where, message))
                problems.append(Problem(where, message))
        raise SpecError(problems) from None
    return LoadedSpec(spec=spec, source_map=source_map)


def load_spec(path: str | Path) -> LoadedSpec:
    src = resolve_extends(load_yaml_file(path), Path(path))
    return validate_document(src.data, src.source_map)


def load_spec_text(text: str, file: str = "<spec>") -> LoadedSpec:
    """A spec from text; `extends:` is resolved relative to `file`'s directory."""
    src = resolve_extends(load_yaml(text, file), Path(file))
    return validate_document(src.data, src.source_map)
