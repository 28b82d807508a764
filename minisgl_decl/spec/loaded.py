"""A validated spec together with where each of its nodes came from."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Location
from .schema import Spec
from .yaml_source import PathKey, SourceMap


@dataclass(frozen=True)
class LoadedSpec:
    spec: Spec
    source_map: SourceMap

    @property
    def file(self) -> str:
        return self.source_map.file

    def where(self, path: PathKey, *, key: bool = False) -> Location:
        return self.source_map.locate(path, key=key)
