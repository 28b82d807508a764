"""Reading untrusted files: regular files only, size-bounded, never blocking on FIFOs or devices."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UserError, show
from .limits import hint, limit

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class FileRefused(UserError):
    """A file that cannot or must not be read; the message names it and says why."""


def file_kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular(path: Path, what: str) -> os.stat_result:
    """stat() `path` (following symlinks) and require a regular file; no open, so nothing blocks."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FileRefused(f"{show(path)}: cannot read {what}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{show(path)}: {what} must be a regular file, this is {file_kind(st.st_mode)}")
    return st


def read_bounded(path: str | Path, what: str, limit_name: str) -> bytes:
    """The bytes of a regular file of at most `limit(limit_name)` bytes."""
    p = Path(path)
    check_regular(p, what)
    cap = limit(limit_name)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise FileRefused(f"{show(p)}: cannot read {what}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{show(p)}: {what} must be a regular file, this is {file_kind(st.st_mode)}")
        if st.st_size > cap:
            raise FileRefused(f"{show(p)}: {what} is {st.st_size} bytes, larger than allowed {hint(limit_name)}")
        chunks = []
        total = 0
        while total <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise FileRefused(f"{show(p)}: cannot read {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        raise FileRefused(f"{show(p)}: {what} is larger than allowed {hint(limit_name)}")
    return data


def decode_text(data: bytes) -> tuple[str | None, str, int]:
    """(text, problem, byte offset): UTF-8 (BOM stripped) or UTF-16/32 with a BOM; else text None."""
    for bom, codec in (
        (b"\xef\xbb\xbf", "utf-8"),
        (b"\xff\xfe\x00\x00", "utf-32-le"),
        (b"\x00\x00\xfe\xff", "utf-32-be"),
        (b"\xff\xfe", "utf-16-le"),
        (b"\xfe\xff", "utf-16-be"),
    ):
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec), "", 0
            except UnicodeDecodeError as exc:
                return None, f"not valid {codec.upper()} text ({exc.reason})", exc.start + len(bom)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text: byte 0x{data[exc.start]:02x} ({exc.reason}); save the file as UTF-8", exc.start
    nul = text.find("\0")
    if nul >= 0:
        off = len(text[:nul].encode("utf-8"))
        return None, "contains a NUL character (UTF-16 without a byte-order mark, or a binary file?)", off
    return text, "", 0


def line_col(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters, best effort) of byte `offset`."""
    line = data.count(b"\n", 0, offset) + 1
    start = data.rfind(b"\n", 0, offset) + 1
    return line, len(data[start:offset].decode("utf-8", "replace")) + 1
