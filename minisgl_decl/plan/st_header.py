"""Validate a safetensors header completely before any tensor byte is read.

The rules are the format's own: an 8-byte little-endian header length, a JSON object
header (`__metadata__` a string -> string map), each tensor entry with a known `dtype`,
a `shape` of non-negative integers and `data_offsets` [begin, end] whose size is
dtype x shape; sorted by begin, the entries tile the data section exactly (contiguous,
no overlap, no gap, ending at the end of the file).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError, show
from ..limits import hint, limit
from ..safe_files import FileRefused, check_regular

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
MAX_DIMS = 8


@dataclass(frozen=True)
class Entry:
    key: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets inside the data section
    end: int


class HeaderError(UserError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(file: str, key: str, info: Any) -> Entry | str:
    k = show(key)
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return f"{file}: corrupt safetensors header: entry `{k}` must have exactly dtype, shape, data_offsets"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        return f"{file}: tensor `{k}` has unknown dtype {show(repr(dtype), 40)} (known: {', '.join(DTYPE_BYTES)})"
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(d) and 0 <= d < 2**62 for d in shape)):
        return f"{file}: corrupt safetensors header: tensor `{k}` has shape {show(repr(shape), 80)}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        return f"{file}: corrupt safetensors header: tensor `{k}` has data_offsets {show(repr(offsets), 80)}"
    begin, end = offsets
    if begin < 0 or end < begin:
        return (
            f"{file}: corrupt safetensors header: tensor `{k}` "
            f"has data_offsets [{begin}, {end}] (need 0 <= begin <= end)"
        )
    want = DTYPE_BYTES[dtype]
    for d in shape:
        want *= d
    if end - begin != want:
        return (
            f"{file}: corrupt safetensors header: tensor `{k}` {dtype} {shape} needs {want} bytes, "
            f"data_offsets give {end - begin}"
        )
    return Entry(key, dtype, tuple(shape), begin, end)


def _layout_problems(file: str, entries: list[Entry], data_size: int) -> list[str]:
    problems = []
    pos = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin < pos:
            problems.append(
                f"{file}: corrupt safetensors header: tensor `{show(e.key)}` bytes [{e.begin}, {e.end}) "
                f"overlap the previous tensor (which ends at {pos})"
            )
        elif e.begin > pos:
            problems.append(
                f"{file}: corrupt safetensors header: gap before tensor `{show(e.key)}` "
                f"(bytes [{pos}, {e.begin}) belong to no tensor)"
            )
        pos = max(pos, e.end)
    past = [e for e in entries if e.end > data_size]
    if past:
        e = min(past, key=lambda e: e.end)
        problems.append(
            f"{file}: truncated: tensor `{show(e.key)}` ends at byte {e.end} but the data section has {data_size}"
        )
    elif pos < data_size:
        problems.append(f"{file}: corrupt safetensors header: {data_size - pos} trailing bytes after the last tensor")
    return problems


def read_header(path: Path) -> tuple[dict[str, Entry], int]:
    """(entries by key, absolute offset of the data section); `HeaderError` lists every problem."""
    name = show(path.name)
    try:
        st = check_regular(path, "a safetensors shard")
    except FileRefused as exc:
        raise HeaderError([str(exc)]) from None
    size = st.st_size
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise HeaderError([f"{name}: cannot read: {exc.strerror}"]) from None
    try:
        raw = os.pread(fd, 8, 0)
        if len(raw) < 8:
            raise HeaderError([f"{name}: not a safetensors file (shorter than the 8-byte header length)"])
        (n,) = struct.unpack("<Q", raw)
        if n > limit("MAX_HEADER_BYTES") or n < 2 or 8 + n > size:
            # the length field is implausible: say so without echoing the file's bytes
            raise HeaderError(
                [
                    f"{name}: not a safetensors file (its header length field does not fit the "
                    f"{size}-byte file or exceeds the header limit {hint('MAX_HEADER_BYTES')})"
                ]
            )
        text = os.pread(fd, n, 8)
    except OSError as exc:
        raise HeaderError([f"{name}: cannot read: {exc.strerror}"]) from None
    finally:
        os.close(fd)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise HeaderError([f"{name}: corrupt safetensors header (not JSON)"]) from None
    except RecursionError:
        raise HeaderError([f"{name}: corrupt safetensors header (JSON nested too deeply)"]) from None
    if not isinstance(header, dict):
        raise HeaderError([f"{name}: corrupt safetensors header (not a JSON object)"])
    problems: list[str] = []
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        problems.append(f"{name}: corrupt safetensors header: `__metadata__` must map strings to strings")
    entries: dict[str, Entry] = {}
    for key, info in header.items():
        e = _entry(name, key, info)
        if isinstance(e, str):
            problems.append(e)
        else:
            entries[key] = e
    if not problems:
        problems = _layout_problems(name, list(entries.values()), size - 8 - n)
    if problems:
        raise HeaderError(problems)
    return entries, 8 + n
