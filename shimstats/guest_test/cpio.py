"""Write a cpio archive in the "newc" format, the one the kernel unpacks as an initramfs.

Each entry is a 110-byte ASCII header (magic 070701 and thirteen 8-digit hex fields), the NUL-terminated
name padded to 4 bytes, then the data padded to 4 bytes; the archive ends with an entry named TRAILER!!!.
Everything is owned by root and dated 0, so the same inputs give the same bytes.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a path relative to the root (no leading /), its mode and its content."""

    name: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, name_size: int) -> bytes:
    fields = (ino, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, name_size, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def write(out: BinaryIO, entries: list[Entry]) -> None:
    """Write ``entries`` (parents before children) and the trailer to ``out``."""
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        if entry.name.startswith("/") or not entry.name:
            raise ValueError(f"cpio member names are relative and not empty: {entry.name!r}")
        name = entry.name.encode() + b"\0"
        head = _header(ino if entry.name != TRAILER else 0, entry, len(name))
        out.write(head + name + _pad(len(head) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
