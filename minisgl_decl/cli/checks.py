"""Checks of command-line values shared by the commands: devices, counts, input and output paths.

Each raises `UserError` naming the option, so a bad argument never reaches torch or the
filesystem as a traceback. `write_atomic` writes an output file through a temporary file
in the same directory, so a failure never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import UserError, show

MAX_NEW_TOKENS = 1 << 20


def check_device(device: str, option: str = "--device") -> str:
    """`cpu`, `cuda` or `cuda:N`, and CUDA only when this build and machine have it."""
    import torch

    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise UserError(f"{option} {show(device)}: expected cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UserError(f"{option} {show(device)}: {why}; use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"{option} {show(device)}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_count(value: int, option: str, low: int = 1, high: int = MAX_NEW_TOKENS) -> int:
    """An integer option within [low, high] (e.g. `--max-new-tokens`, `--tp`)."""
    if not low <= value <= high:
        raise UserError(f"{option} {value}: expected an integer from {low} to {high}")
    return value


def check_input_dir(path: str, option: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{option} {show(p)}: no such directory")
    if not p.is_dir():
        raise UserError(f"{option} {show(p)}: not a directory")
    return p


def check_output_dir(path: str, option: str) -> Path:
    """An output directory that exists (or can be created) and is writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {show(p)}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {show(p)}: cannot create the directory ({exc.strerror})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{option} {show(p)}: directory is not writable")
    return p


def check_output_file(path: str, option: str) -> Path:
    """An output file whose directory exists and is writable (the file itself may not exist yet)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {show(p)}: is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{option} {show(p)}: directory {show(parent)} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{option} {show(p)}: not writable")
    return p


def write_atomic(path: Path, text: str, option: str) -> None:
    """Write `text` to `path` via a temporary file + rename: either the whole file appears or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise UserError(f"{option} {show(path)}: cannot write ({exc.strerror})") from None
    except BaseException:
        os.unlink(tmp)
        raise
