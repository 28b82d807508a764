"""Checkpoint directory metadata from safetensors headers only (no tensor data read).

Everything here is untrusted: `config.json` and the index are size-bounded regular files
decoded strictly; shard names must be plain relative paths inside the directory (a
symlink inside it, as in the Hugging Face cache layout, is followed); every header is
validated completely (`st_header`) before the loader reads a tensor byte.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import UserError, show
from ..safe_files import FileRefused, read_bounded
from .st_header import DTYPE_BYTES, HeaderError, read_header

INDEX_FILE = "model.safetensors.index.json"


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


def _read_json(path: Path, what: str) -> Any:
    try:
        data = read_bounded(path, what, "MAX_JSON_BYTES")
    except FileRefused as exc:
        raise UserError(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{show(path)}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); JSON must be UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{show(path)}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise UserError(f"{show(path)}: JSON nested too deeply") from None


def load_config(directory: Path) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not directory.is_dir():
        raise UserError(f"{show(directory)}: not a directory (expected a Hugging Face checkpoint directory)")
    if not cfg_path.exists():
        raise UserError(f"{show(directory)}: no config.json (is this a Hugging Face checkpoint directory?)")
    cfg = _read_json(cfg_path, "config.json")
    if not isinstance(cfg, dict):
        raise UserError(f"{show(cfg_path)}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def shard_name_problem(name: Any) -> str | None:
    """Why `name` may not name a shard (None: a plain relative path that stays inside the directory)."""
    if not isinstance(name, str) or not name:
        return f"shard names must be non-empty strings, got {show(repr(name), 60)}"
    p = PurePosixPath(name)
    if "\\" in name or "\0" in name or p.is_absolute() or ".." in p.parts:
        return (
            f"shard `{show(name)}` is outside the checkpoint directory: name files inside it "
            "(e.g. `model-00001-of-00002.safetensors`)"
        )
    return None


def _weight_map(d: Path) -> dict[str, str]:
    index = _read_json(d / INDEX_FILE, INDEX_FILE)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict):
        got = type(wm).__name__ if isinstance(index, dict) and "weight_map" in index else "none"
        raise CheckpointError(
            [f"{INDEX_FILE}: `weight_map` must be a JSON object of tensor name -> shard file (got {got})"]
        )
    problems = []
    for key, f in wm.items():
        why = shard_name_problem(f)
        if why is not None:
            problems.append(f"{INDEX_FILE}: tensor `{show(key)}`: {why}")
    if problems:
        raise CheckpointError(problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []))
    return wm


def scan_checkpoint(directory: str | Path) -> CheckpointIndex:
    """Index every tensor of a checkpoint directory by reading and validating headers only."""
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{show(d)}: not a directory")
    config = load_config(d)
    problems: list[str] = []
    if (d / INDEX_FILE).exists():
        weight_map = _weight_map(d)
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (d / f).exists():
                names = [k for k, v in weight_map.items() if v == f]
                problems.append(
                    f"{INDEX_FILE} names shard `{show(f)}` (for {len(names)} tensors, e.g. "
                    f"`{show(names[0])}`): expected the file in {show(d)}, found no such file"
                )
    else:
        files = sorted(p.name for p in d.glob("*.safetensors"))
        weight_map = {}
        if not files:
            raise CheckpointError([f"{show(d)}: no *.safetensors files"])
    tensors: dict[str, TensorInfo] = {}
    readable: set[str] = set()
    for f in files:
        if not (d / f).exists():
            continue
        try:
            entries, start = read_header(d / f)
        except HeaderError as exc:
            problems.extend(exc.problems)
            continue
        readable.add(f)
        for key, e in entries.items():
            if weight_map and weight_map.get(key) != f:
                continue
            if key in tensors:
                problems.append(
                    f"tensor `{show(key)}` is in both {show(tensors[key].file)} and {show(f)}: "
                    f"expected one file per tensor (no {INDEX_FILE} says which)"
                )
                continue
            tensors[key] = TensorInfo(key, f, e.dtype, e.shape, start + e.begin)
    for key, f in weight_map.items():
        if key not in tensors and f in readable:
            problems.append(f"{INDEX_FILE} maps `{show(key)}` to `{show(f)}`, but that file does not hold it")
    if problems:
        raise CheckpointError(problems)
    return CheckpointIndex(d, tensors, config)
