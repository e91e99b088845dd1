"""A live child cgroup of this (v1) machine with a page-cache workload in it, and the kernel's own working set
for it: fixtures for the live tests (test_adapter_live.py says what the workload does and why)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats.demo import remove_cgroup
from tests.integration.harness import short_tmp

CGROUPFS = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpuacct", "pids")
WRITE_MIB, READ_MIB = 100, 30
TOLERANCE = 64 * 4096
"""64 pages: what an idle cgroup's charge may drift by within a second (kernel allocations, LRU moves)."""
READY = "live-ready"
RMDIR_TIMEOUT = 5.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    if not (CGROUPFS / "memory" / "memory.usage_in_bytes").exists():
        return f"no cgroup v1 memory hierarchy at {CGROUPFS}/memory"
    return None


@pytest.fixture
def live_cgroup() -> Iterator[str]:
    """A fresh child cgroup in each v1 hierarchy of CONTROLLERS; removed afterwards (its name is yielded)."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the live cgroup test must run in CI: {reason}")
        pytest.skip(reason)
    name = f"ss-live-{uuid.uuid4().hex[:8]}"
    made = []
    try:
        for controller in CONTROLLERS:
            directory = CGROUPFS / controller / name
            if (CGROUPFS / controller).is_dir():
                directory.mkdir()
                made.append(directory)
        yield name
    finally:
        for directory in made:
            remove_cgroup(directory, timeout=RMDIR_TIMEOUT)


@pytest.fixture
def page_cache_workload(live_cgroup: str) -> Iterator[str]:
    """A process in the live cgroup holding about READ_MIB active and the rest inactive file cache."""
    with short_tmp() as directory:
        data = directory / "cache.bin"
        joins = " ".join(f"{CGROUPFS / c / live_cgroup / 'cgroup.procs'}" for c in CONTROLLERS)
        script = (
            f'for f in {joins}; do [ -e "$f" ] && echo $$ > "$f"; done; '
            f"dd if=/dev/zero of={data} bs=1M count={WRITE_MIB} conv=fsync 2>/dev/null && "
            f"head -c {READ_MIB << 20} {data} >/dev/null && head -c {READ_MIB << 20} {data} >/dev/null && "
            f"echo {READY} && exec sleep 120"
        )
        process = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # bounded: dd of 100 MiB to disk takes about a second
            assert line.strip() == READY, f"workload failed: {line!r}, exit {process.poll()}"
            yield live_cgroup
        finally:
            process.kill()
            process.wait()
            shutil.rmtree(directory, ignore_errors=True)


def kernel_working_set(name: str) -> tuple[int, int]:
    """(usage_in_bytes - total_inactive_file, total_inactive_file), read from the kernel now."""
    memory = CGROUPFS / "memory" / name
    usage = int((memory / "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
    inactive = int(stat["total_inactive_file"])
    return max(usage - inactive, 0), inactive
