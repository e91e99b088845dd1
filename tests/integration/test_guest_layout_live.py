"""Hierarchies found from the real /proc/self/mountinfo (issue 15 §2), on cgroup v1 hierarchies this test
mounts itself under a temporary directory with names that do not say what they hold.

The kernel lets a v1 hierarchy be mounted again elsewhere with the same controllers (it is the same
hierarchy, shared). Here cpu is mounted at ``sched``, cpuacct at ``acct``, memory at ``mem`` and the
co-mounted ``net_cls,net_prio`` at a decoy named ``cpu``: a reader that went by directory names would take
the decoy for the cpu controller and find no cpu files there. Needs root and the v1 cpu, cpuacct and memory
controllers mounted (as on this project's machines); skipped otherwise. Everything is unmounted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout, parse_mountinfo
from guest_agent.reader import CgroupReader

V1 = "/sys/fs/cgroup"
MOUNTS = {"sched": "cpu", "acct": "cpuacct", "mem": "memory", "cpu": "net_cls,net_prio"}


def _live_v1() -> bool:
    return all(
        os.path.isfile(f"{V1}/{c}/{f}") for c, f in (("cpuacct", "cpuacct.usage"), ("memory", "memory.stat"))
    )


pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not _live_v1(), reason="needs root and cgroup v1")


@contextlib.contextmanager
def mounted() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="shimstats-mnt-"))
    done: list[Path] = []
    try:
        for name, options in MOUNTS.items():
            target = root / name
            target.mkdir()
            result = subprocess.run(
                ["mount", "-t", "cgroup", "-o", options, "none", str(target)], capture_output=True, text=True
            )
            if result.returncode != 0:
                pytest.skip(f"cannot mount a cgroup v1 hierarchy ({options}): {result.stderr.strip()}")
            done.append(target)
        yield root
    finally:
        for target in reversed(done):
            subprocess.run(["umount", str(target)], check=False)
        for name in MOUNTS:
            with contextlib.suppress(OSError):
                (root / name).rmdir()
        root.rmdir()


def test_hierarchies_come_from_mountinfo_not_from_directory_names():
    with mounted() as root:
        with open("/proc/self/mountinfo") as f:
            mine = [m for m in parse_mountinfo(f.read()) if m.mount_point.startswith(f"{root}/")]
        assert {Path(m.mount_point).name: m.options - {"rw"} for m in mine} == {
            name: set(options.split(",")) for name, options in MOUNTS.items()
        }
        layout = detect_layout(str(root))
        assert {n: Path(h.mount).name for n, h in layout.controllers.items()} == {
            "cpu": "sched",
            "cpuacct": "acct",
            "memory": "mem",
        }
        assert layout.mounted_devices == frozenset(m.device for m in mine)
        before = int(Path(f"{V1}/cpuacct/cpuacct.usage").read_text())
        reader = CgroupReader(layout)
        try:
            record = reader.read("/")
        finally:
            reader.close()
        after = int(Path(f"{V1}/cpuacct/cpuacct.usage").read_text())
        assert record.cpu is not None
        assert record.cpu.usage is not None
        assert before <= record.cpu.usage.total <= after  # the same hierarchy as /sys/fs/cgroup/cpuacct
        assert record.memory is not None
        assert "total_inactive_file" in record.memory.stat
        assert reader.errors.snapshot() == {}
    assert not any(str(root) in line for line in Path("/proc/self/mountinfo").read_text().splitlines())
