"""Live kernel end to end: guest agent on a child cgroup of this machine (v1) → `shimstats serve` →
`shimstats stats --json`, in both output formats.

The workload writes WRITE_MIB to a file on the real disk (ext4 /tmp), syncs it and reads its first READ_MIB
twice, so the cgroup holds about READ_MIB of active and the rest as inactive file cache, then sleeps. The
ground truth is the kernel's own memory.usage_in_bytes − total_inactive_file (memory.stat), read right before
and right after the `shimstats stats` process; the reported working set must lie between those two readings,
give or take TOLERANCE (pages the kernel may charge or reclaim in between). The whole check takes a few
seconds, well inside the minute after which this machine evicts idle page cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import CLI, REPO, AgentProcess, ServeProcess, short_tmp

CGROUPFS = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpuacct", "pids")
WRITE_MIB, READ_MIB = 100, 30
TOLERANCE = 64 * 4096
"""64 pages: what an idle cgroup's charge may drift by within a second (kernel allocations, LRU moves)."""
READY = "live-ready"
RMDIR_TIMEOUT = 5.0

pytestmark = pytest.mark.live_cgroup


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
            _rmdir(directory)


def _rmdir(directory: Path) -> None:
    """rmdir a cgroup, retrying while its last process is still being torn down."""
    deadline = time.monotonic() + RMDIR_TIMEOUT
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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


def test_live_working_set_matches_the_kernel(page_cache_workload: str) -> None:
    name = page_cache_workload
    with short_tmp() as directory:
        agent_args = ["--cgroupfs-root", str(CGROUPFS), "--container", f"{name}=/{name}"]
        with AgentProcess(directory, agent_args) as agent:
            for output in ("v1", "v2"):
                with ServeProcess(directory, agent.address, "--metrics-format", output, name=output) as serve:
                    before, inactive = kernel_working_set(name)
                    done = subprocess.run(
                        [*CLI, "stats", "--shim", serve.address, "--id", name, "--json"],
                        cwd=REPO,
                        capture_output=True,
                        text=True,
                        timeout=30,
                    )
                    after, _ = kernel_working_set(name)
                    assert serve.stop() == 0
                assert done.returncode == 0, done.stderr
                answer = json.loads(done.stdout)
                assert answer["type_url"] == f"io.containerd.cgroups.{output}.Metrics"
                reported = answer["cri"]["working_set_bytes"]
                low, high = min(before, after) - TOLERANCE, max(before, after) + TOLERANCE
                assert low <= reported <= high, (output, before, after, reported)
                # the workload's cache is really there, so subtracting it is what makes this right
                assert inactive > (WRITE_MIB - READ_MIB) // 2 << 20
                assert answer["cri"]["usage_bytes"] - reported > (WRITE_MIB - READ_MIB) // 2 << 20
