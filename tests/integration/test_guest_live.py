"""The agent on this machine's live kernel cgroups: a real child cgroup with ~100 MiB of page cache.

A workload process moves itself into a fresh child cgroup (every hierarchy the agent reads), writes 100 MiB
to a file on a real disk, syncs and reads it back, then idles. The agent's answer over a unix socket must
equal the response derived from the cgroup files read right before or right after the call (this machine
evicts idle page cache after about a minute, so everything happens within a second or two). Removing the
cgroup afterwards turns the answer into NOT_FOUND. Root only; everything created is removed, even on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from shimstats.ttrpc import Code, TtrpcError
from tests.integration.guest_agent_helpers import as_dict, serving, stats, truth

pytestmark = [
    pytest.mark.live_cgroup,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
WRITE_MIB = 100
MIB = 1 << 20
ATTEMPTS = 3  # a counter may tick between our read of the files and the agent's: compare again, bounded

WORKLOAD = r"""
import os, sys
for procs in sys.argv[2:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
block = b"\1" * (1 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(os.environ["WRITE_MIB"])):
        f.write(block)
    f.flush()
    os.fsync(f.fileno())
with open(sys.argv[1], "rb") as f:
    while f.read(1 << 20):
        pass
print("ready", flush=True)
sys.stdin.read()
"""


def disk_dir(tmp_path: Path) -> Path:
    """A directory on a real disk (page cache must come from a block device, not tmpfs)."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mounts.append((fields[4], fields[fields.index("-") + 1]))
    for candidate in (Path("/var/tmp"), tmp_path):
        _, fstype = max((m for m in mounts if str(candidate).startswith(m[0])), key=lambda m: len(m[0]))
        if fstype not in ("tmpfs", "ramfs", "devtmpfs") and candidate.is_dir():
            return candidate
    pytest.skip("no disk-backed directory for the page cache workload")


@pytest.fixture
def live_cgroup(tmp_path: Path) -> Iterator[tuple[str, list[Path], Path]]:
    """A fresh child cgroup in every hierarchy the agent reads: (name, its directories, a data file path)."""
    layout = detect_layout(str(CGROUP_ROOT))
    name = f"shimstats-live-{uuid.uuid4().hex[:12]}"
    mounts = sorted({os.path.realpath(h.mount) for h in layout.controllers.values()})
    created: list[Path] = []
    data = disk_dir(tmp_path) / f"{name}.data"
    try:
        for mount in mounts:
            directory = Path(mount) / name
            directory.mkdir()
            created.append(directory)
        yield name, created, data
    finally:
        data.unlink(missing_ok=True)
        for directory in created:
            if directory.exists():
                directory.rmdir()


def start_workload(dirs: list[Path], data: Path) -> subprocess.Popen[str]:
    procs = [str(d / "cgroup.procs") for d in dirs]
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD, str(data), *procs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "WRITE_MIB": str(WRITE_MIB)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"workload did not get ready: {line!r}")
    return proc


def stop_workload(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    proc.wait(timeout=10)
    proc.stdout.close()


async def test_live_answer_equals_the_files_and_vanishing_is_not_found(live_cgroup, sock_dir):
    name, dirs, data = live_cgroup
    meminfo = Path("/proc/meminfo")
    proc = start_workload(dirs, data)
    try:
        async with serving(sock_dir / "a.sock", CGROUP_ROOT, meminfo) as client:
            for _ in range(ATTEMPTS):
                before = as_dict(truth(CGROUP_ROOT, f"/{name}", meminfo))
                answer = await stats(client, name)  # found by discovery: the directory is named after the id
                after = as_dict(truth(CGROUP_ROOT, f"/{name}", meminfo))
                if as_dict(answer) in (before, after):
                    break
            assert as_dict(answer) in (before, after), (as_dict(answer), before, after)
            memory = answer.cgroup_stats.memory_stats
            # The file's page cache is charged here: it shows as cache, within usage, on the file LRUs.
            file_lrus = memory.stats.get("total_inactive_file", memory.stats.get("inactive_file", 0)) + (
                memory.stats.get("total_active_file", memory.stats.get("active_file", 0))
            )
            assert file_lrus >= (WRITE_MIB - 10) * MIB
            assert memory.usage.usage >= file_lrus
            assert answer.cgroup_stats.pids_stats.current == 1
        stop_workload(proc)
        for directory in dirs:
            directory.rmdir()
        async with serving(sock_dir / "b.sock", CGROUP_ROOT, meminfo, {"gone": f"/{name}"}) as client:
            with pytest.raises(TtrpcError) as info:
                await stats(client, "gone")
            assert info.value.code == Code.NOT_FOUND
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_a_cgroup_removed_while_its_files_are_open_is_not_found(live_cgroup, sock_dir):
    # The agent keeps cgroup files open between calls; after rmdir those reads fail with ENODEV, which must
    # become NOT_FOUND for the id (and the connection must keep working).
    name, dirs, _ = live_cgroup
    async with serving(sock_dir / "a.sock", CGROUP_ROOT, Path("/proc/meminfo")) as client:
        first = await stats(client, name)
        assert first.cgroup_stats.memory_stats.HasField("usage")
        for directory in dirs:
            directory.rmdir()
        with pytest.raises(TtrpcError) as info:
            await stats(client, name)
        assert info.value.code == Code.NOT_FOUND
        assert name in info.value.message
        assert (await stats(client, "")).cgroup_stats.memory_stats.usage.usage > 0
