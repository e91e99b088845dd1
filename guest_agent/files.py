"""Read small kernel files fast by keeping them open and re-reading them with pread at offset 0.

Why: on cgroupfs an open() costs 4-6 µs (kernfs path walk) while pread of an open file costs about 1 µs, and
kernfs regenerates a file's content on every read from offset 0. A stats answer reads some 20-35 files, so
this turns ~250 µs of syscalls into ~40 µs. Missing files are not cached (a file may appear later, e.g. when
a v2 parent enables a controller). At most ``max_open`` files stay open (least recently used are closed
first; by default MAX_OPEN, or a quarter of the fd limit when that is lower).

A kept fd must never serve a file that is no longer at its path:
- on cgroupfs (kernfs) a file cannot be replaced, only removed with its cgroup: an open file does not pin
  the cgroup, rmdir succeeds and later reads fail with ENODEV. The fd is then closed and the path opened
  once more, which finds the file of a cgroup created again under the same name, or nothing ("missing").
  This costs nothing per read, so files on ``kernfs_devices`` (the st_dev of the mounted cgroup
  hierarchies) get no other check: the hot path stays one pread.
- any other file (a captured tree under ``--cgroupfs-root``) keeps its content after ``rm`` and through a
  ``mv`` over it, so each read first checks ``fstat(fd).st_nlink``: 0 means the inode is no longer linked
  anywhere (deleted, or replaced by a new inode), and the path is opened again. In-place rewrites need no
  check: pread at offset 0 sees them.

Absent files: with ``absent_for`` set (the reader sets ABSENT_FOR), a path found missing is not opened again
for that many seconds. Every stats call probes files that this kernel or this cgroup does not have (the BFQ
and CFQ blkio files, memsw without swap accounting, a v2 cgroup.controllers, cpuacct in a merged hierarchy):
a failed open costs 4-6 µs of kernfs path walk plus a Python exception, several per call. Only absence is
remembered, never a value: a file that appears is seen within ``absent_for`` seconds, and ``forget`` (the
cgroup is gone) drops what was remembered under the directory.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Literal, overload

_CHUNK = 1 << 16
MAX_OPEN = 4096
ABSENT_FOR = 1.0
"""Seconds a missing file is taken as missing without a new open (the reader's setting)."""
"""Enough for some 140 containers at ~28 files each. Stats calls cycle over every container, and an LRU
smaller than that cycle never hits: with 100 containers and 512 files every read reopened its file, twice
the cost of a call (bench.throughput, profiled with py-spy)."""


def default_max_open() -> int:
    """MAX_OPEN files, or a quarter of the fd limit when that is lower (sockets need the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_OPEN if soft == resource.RLIM_INFINITY else max(8, min(MAX_OPEN, soft // 4))


class FileCache:
    """Open kernel files by path, reused across reads; not thread-safe (one event loop owns it)."""

    def __init__(
        self, max_open: int | None = None, kernfs_devices: Collection[int] = (), absent_for: float = 0.0
    ) -> None:
        self.max_open = max_open if max_open is not None else default_max_open()
        self.kernfs_devices = frozenset(kernfs_devices)
        self.absent_for = absent_for
        self._fds: OrderedDict[str, tuple[int, bool]] = OrderedDict()
        """path → (fd, whether each read checks that the inode is still linked)."""
        self._absent: dict[str, float] = {}
        """path → time.monotonic() until which it is taken as missing (only with absent_for)."""

    def read_bytes(self, path: str) -> bytes | None:
        """The file's whole current content, or None when it does not exist (or its cgroup was removed)."""
        entry = self._fds.get(path)
        if entry is not None:
            fd, check = entry
            if check and os.fstat(fd).st_nlink == 0:  # deleted or replaced: the path names another inode
                self._drop(path)
            else:
                self._fds.move_to_end(path)
                try:
                    data = os.pread(fd, _CHUNK, 0)  # the hot path: one pread, no further call
                    return data if len(data) < _CHUNK else _read_rest(fd, data)
                except OSError as e:
                    self._drop(path)
                    if e.errno != errno.ENODEV:
                        raise
                    # ENODEV: the cgroup was removed; one created again under the same name has new files.
        elif self._absent and path in self._absent:
            if time.monotonic() < self._absent[path]:
                return None
            del self._absent[path]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if self.absent_for > 0:
                if len(self._absent) >= self.max_open:  # bounded: start over rather than grow
                    self._absent.clear()
                self._absent[path] = time.monotonic() + self.absent_for
            return None
        self._fds[path] = (fd, os.fstat(fd).st_dev not in self.kernfs_devices)
        if len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1][0])
        try:
            data = os.pread(fd, _CHUNK, 0)
            return data if len(data) < _CHUNK else _read_rest(fd, data)
        except OSError as e:
            self._drop(path)
            if e.errno == errno.ENODEV:  # removed between open and read
                return None
            raise

    @overload
    def read_open(self, paths: Sequence[str]) -> list[bytes] | None: ...

    @overload
    def read_open(self, paths: Sequence[str], absent: Literal[True]) -> list[bytes | None] | None: ...

    def read_open(self, paths: Sequence[str], absent: bool = False) -> Sequence[bytes | None] | None:
        """The content of each file of ``paths`` when every one is open (and, where its reads check the
        inode, still linked), read in this one frame; None as soon as one is not, and the caller reads them
        one by one with read_bytes, which opens, checks, reopens, remembers absence and handles errors.
        With ``absent``, a file remembered as absent is None in its place, as read_bytes would answer.

        Why: around its pread, read_bytes costs a Python call per file, and a Stats reads some 16 one-value
        files and probes some absent ones. Nothing is remembered here that read_bytes would not also
        remember.
        """
        # Bound once: some 300 instructions a file less than looking each up in the loop.
        entry_of, move_to_end, pread = self._fds.get, self._fds.move_to_end, os.pread
        out: list[bytes | None] = []
        append = out.append
        for path in paths:
            entry = entry_of(path)
            if entry is None:
                if absent and path in self._absent and time.monotonic() < self._absent[path]:
                    append(None)
                    continue
                return None
            fd, check = entry
            if check and os.fstat(fd).st_nlink == 0:
                return None
            move_to_end(path)
            try:
                data = pread(fd, _CHUNK, 0)
            except OSError:  # read_bytes reads it again and handles the error (ENODEV: the cgroup is gone)
                return None
            append(data if len(data) < _CHUNK else _read_rest(fd, data))
        return out

    def forget(self, directory: str) -> None:
        """Close every cached file under ``directory`` (its cgroup is gone)."""
        prefix = directory.rstrip("/") + "/"
        for path in [p for p in self._fds if p.startswith(prefix)]:
            self._drop(path)
        for path in [p for p in self._absent if p.startswith(prefix)]:
            del self._absent[path]

    def close(self) -> None:
        """Close every cached file."""
        self._absent.clear()
        while self._fds:
            os.close(self._fds.popitem()[1][0])

    def __len__(self) -> int:
        return len(self._fds)

    def _drop(self, path: str) -> None:
        entry = self._fds.pop(path, None)
        if entry is not None:
            os.close(entry[0])


_DIR_PROBE = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def is_dir(path: str) -> bool:
    """os.path.isdir(path), by an O_PATH open of the directory (about 3k instructions against isdir's 8k, most
    of which build a stat result; a Stats asks once or twice whether its cgroup still exists); any failure
    but "no such directory" asks isdir itself, so that the answer is always isdir's (EMFILE, say, must not
    read as a removed cgroup)."""
    try:
        os.close(os.open(path, _DIR_PROBE))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return os.path.isdir(path)
    return True


def _read_rest(fd: int, data: bytes) -> bytes:
    """The whole content of an open file whose first ``_CHUNK`` bytes, read from offset 0 (kernfs regenerates
    the content on such a read), are ``data``."""
    while len(data) % _CHUNK == 0 and data:
        more = os.pread(fd, _CHUNK, len(data))
        if not more:
            break
        data += more
    return data
