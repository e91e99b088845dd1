"""The container's workload in guest-test: one process that builds memory state step by step on command.

``python -m shimstats.guest_test.worker DATA_DIR SHM_DIR``, started inside the container cgroup. It reads one
command per line on stdin, does it, and answers ``ok <json>`` (or ``error <text>``) on stdout; everything it
allocates stays allocated until it is killed, so the phases build on each other. Standard library only:
it starts in a guest under emulation, where every import costs.
"""

from __future__ import annotations

import json
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

from shimstats.guest_test import phases

PAGE = mmap.PAGESIZE
_CHUNK = b"\0" * phases.MIB
_held: list[object] = []
"""What must stay resident: the mappings and buffers the steps made."""


def _touch(buffer: mmap.mmap | bytearray) -> None:
    for offset in range(0, len(buffer), PAGE):
        buffer[offset] = 1


def pagecache(data: str, shm: str) -> dict[str, Any]:
    path = os.path.join(data, "pagecache.bin")
    with open(path, "wb") as f:
        for _ in range(phases.PAGE_CACHE_MIB):
            f.write(_CHUNK)
        f.flush()
        os.fsync(f.fileno())
    for _ in range(2):
        with open(path, "rb") as f:
            left = phases.REREAD_MIB * phases.MIB
            while left > 0 and f.read(min(left, phases.MIB)):
                left -= phases.MIB
    return {"file": path}


def anon_thp(data: str, shm: str) -> dict[str, Any]:
    size = phases.ANON_MIB * phases.MIB
    # Two extra huge pages of room so that an aligned run of huge pages fits whatever the mapping's start.
    mapping = mmap.mmap(-1, size + 2 * (2 * phases.MIB), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        mapping.madvise(mmap.MADV_HUGEPAGE)
    _touch(mapping)
    _held.append(mapping)
    return {"bytes": len(mapping), "anon_huge_pages_kib": _smaps_rollup("AnonHugePages:")}


def shmem(data: str, shm: str) -> dict[str, Any]:
    path = os.path.join(shm, "guest-test.shm")
    with open(path, "wb") as f:
        for _ in range(phases.SHMEM_MIB):
            f.write(_CHUNK)
    return {"file": path}


def pressure(data: str, shm: str) -> dict[str, Any]:
    buffer = bytearray(phases.PRESSURE_MIB * phases.MIB)
    _touch(buffer)
    _held.append(buffer)
    return {"bytes": len(buffer), "swap_kib": _smaps_rollup("Swap:")}


def _smaps_rollup(key: str) -> int | None:
    try:
        with open("/proc/self/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


STEPS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "pagecache": pagecache,
    "anon-thp": anon_thp,
    "shmem": shmem,
    "pressure": pressure,
}


def main(argv: list[str]) -> int:
    data, shm = argv
    print("ok " + json.dumps({"pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        step = STEPS.get(line.strip())
        if step is None:
            print(f"error unknown step {line.strip()!r}", flush=True)
            continue
        try:
            print("ok " + json.dumps(step(data, shm)), flush=True)
        except OSError as exc:
            print(f"error {line.strip()}: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
