"""Checkpoint directory metadata from safetensors headers only (no tensor data read)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER = 100 * 1024 * 1024

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset of the tensor's data in `file`

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES.get(self.dtype, 1)
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class CheckpointIndex:
    directory: Path
    tensors: Mapping[str, TensorInfo]
    config: Mapping[str, Any]


class CheckpointError(UserError):
    """A checkpoint that cannot be read; lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("checkpoint problems:\n" + "\n".join(f"  - {p}" for p in problems))


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file, checked against the file size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError([f"{path.name}: truncated (no safetensors header)"])
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError([f"{path.name}: corrupt safetensors header (length {n}, file size {size})"])
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError([f"{path.name}: corrupt safetensors header (not JSON)"]) from None
    if not isinstance(header, dict):
        raise CheckpointError([f"{path.name}: corrupt safetensors header"])
    data_size = size - 8 - n
    problems = [p for key, info in header.items() if key != "__metadata__"
                for p in _entry_problems(path.name, key, info, data_size)]
    if problems:
        raise CheckpointError(problems)
    header["__data_start__"] = 8 + n
    return header


def _entry_problems(file: str, key: str, info: Any, data_size: int) -> list[str]:
    """Problems with one header entry: its dtype, shape and byte range must agree with the file."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        return [f"{file}: corrupt safetensors header: entry `{key}` lacks dtype/shape/data_offsets"]
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        return [f"{file}: tensor `{key}` has unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        return [f"{file}: corrupt safetensors header: tensor `{key}` has shape {shape!r}"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return [f"{file}: corrupt safetensors header: tensor `{key}` has data_offsets {offsets!r}"]
    begin, end = offsets
    if end > data_size:
        return [f"{file}: truncated: tensor `{key}` ends at byte {end} but the data section has {data_size}"]
    want = TensorInfo(key, file, dtype, tuple(shape)).nbytes
    if end - begin != want:
        return [f"{file}: corrupt safetensors header: tensor `{key}` {dtype} {shape} needs {want} bytes, "
                f"data_offsets give {end - begin}"]
    return []


def load_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{directory}: no config.json (is this a Hugging Face checkpoint directory?)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: expected a JSON object")
    return cfg


def scan_checkpoint(directory: str | Path) -> CheckpointIndex:
    """Index every tensor of a checkpoint directory by reading headers only."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{d}: not a directory")
    config = load_config(d)
    index_path = d / INDEX_FILE
    problems: list[str] = []
    if index_path.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CheckpointError([f"{INDEX_FILE}: not a valid index (needs `weight_map`)"]) from None
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (d / f).is_file():
                names = [k for k, v in weight_map.items() if v == f]
                problems.append(f"{INDEX_FILE} names shard `{f}` (for {len(names)} tensors, e.g. "
                                f"`{names[0]}`): expected the file in {d}, found no such file")
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
        weight_map = {}
        if not files:
            raise CheckpointError([f"{d}: no *.safetensors files"])
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        if not (d / f).is_file():
            continue
        try:
            header = read_header(d / f)
        except CheckpointError as exc:
            problems.extend(exc.problems)
            continue
        start = header.pop("__data_start__")
        for key, info in header.items():
            if key == "__metadata__":
                continue
            if weight_map and weight_map.get(key) != f:
                continue
            if key in tensors:
                problems.append(f"tensor `{key}` is in both {tensors[key].file} and {f}: expected one "
                                f"file per tensor (no {INDEX_FILE} says which)")
                continue
            offset = start + info["data_offsets"][0]
            tensors[key] = TensorInfo(key, f, info["dtype"], tuple(info["shape"]), offset)
    for key, f in weight_map.items():
        if key not in tensors and (d / f).is_file() and not any(f in p for p in problems):
            problems.append(f"{INDEX_FILE} maps `{key}` to `{f}`, but that file does not hold it")
    if problems:
        raise CheckpointError(problems)
    return CheckpointIndex(d, tensors, config)
