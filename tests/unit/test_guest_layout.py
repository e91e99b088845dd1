"""Layout detection (guest_agent.layout) on small trees shaped like /sys/fs/cgroup, and on the live one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest_agent.layout import Hierarchy, LayoutError, detect_layout


def make_v1(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).mkdir(parents=True)


def test_pure_v2_puts_listed_controllers_and_cpu_at_the_root(tmp_path):
    # cgroup.controllers of a v2 root lists what the kernel offers; cpu.stat exists even without "cpu".
    (tmp_path / "cgroup.controllers").write_text("cpuset io memory hugetlb pids rdma misc\n")
    layout = detect_layout(str(tmp_path))
    assert layout.mode == "v2"
    here = Hierarchy(2, str(tmp_path))
    assert dict(layout.controllers) == {
        "memory": here,
        "cpu": here,
        "pids": here,
        "blkio": here,
        "hugetlb": here,
    }
    assert layout.primary == here


def test_v2_without_the_memory_controller_has_no_memory(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    layout = detect_layout(str(tmp_path))
    assert set(layout.controllers) == {"cpu", "pids"}
    assert layout.primary == Hierarchy(2, str(tmp_path))  # cpu's, since memory is absent


def test_pure_v1_with_cpu_and_cpuacct_as_symlinks_to_their_shared_mount(tmp_path):
    make_v1(tmp_path, ["memory", "cpu,cpuacct", "pids", "blkio"])
    os.symlink("cpu,cpuacct", tmp_path / "cpu")
    os.symlink("cpu,cpuacct", tmp_path / "cpuacct")
    layout = detect_layout(str(tmp_path))
    assert layout.mode == "v1"
    assert {name: h.version for name, h in layout.controllers.items()} == {
        "memory": 1,
        "cpu": 1,
        "cpuacct": 1,
        "pids": 1,
        "blkio": 1,
    }
    assert layout.controllers["cpu"].mount == str(tmp_path / "cpu")
    assert layout.primary == Hierarchy(1, str(tmp_path / "memory"))


def test_hybrid_gives_v2_only_what_no_v1_hierarchy_claims(tmp_path):
    # As here: v1 controllers, and cgroup2 at unified/ offering hugetlb (and memory, which v1 owns).
    make_v1(tmp_path, ["memory", "cpu", "cpuacct", "pids", "blkio"])
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb memory\n")
    layout = detect_layout(str(tmp_path))
    assert layout.mode == "hybrid"
    assert layout.controllers["memory"] == Hierarchy(1, str(tmp_path / "memory"))
    assert layout.controllers["cpu"] == Hierarchy(1, str(tmp_path / "cpu"))
    assert layout.controllers["hugetlb"] == Hierarchy(2, str(tmp_path / "unified"))
    assert layout.describe() == "hybrid: memory=v1 cpu=v1 cpuacct=v1 pids=v1 blkio=v1 hugetlb=v2"


def test_hybrid_cpu_goes_to_v2_only_when_v1_has_neither_cpu_nor_cpuacct(tmp_path):
    make_v1(tmp_path, ["memory"])
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    layout = detect_layout(str(tmp_path))
    assert layout.controllers["cpu"] == Hierarchy(2, str(tmp_path / "unified"))
    assert "cpuacct" not in layout.controllers


def test_no_hierarchy_is_an_error_naming_the_root(tmp_path):
    with pytest.raises(LayoutError, match=str(tmp_path)):
        detect_layout(str(tmp_path))


def test_dir_for_maps_cgroup_paths_into_the_mount():
    h = Hierarchy(1, "/sys/fs/cgroup/memory")
    assert h.dir_for("/") == "/sys/fs/cgroup/memory"
    assert h.dir_for("/kubepods/pod1/abc") == "/sys/fs/cgroup/memory/kubepods/pod1/abc"


def _mounts_under(root: str) -> dict[str, str]:
    """mount point → filesystem type for every cgroup/cgroup2 mount under root (from /proc/self/mountinfo)."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") and fields[4].startswith(root):
                out[fields[4]] = fstype
    return out


def test_live_layout_agrees_with_mountinfo():
    # Rule: every v1 controller we report is a "cgroup" mount (or a symlink to one), a v2 one lives on the
    # "cgroup2" mount, and the mode is hybrid exactly when both kinds are mounted under /sys/fs/cgroup.
    mounts = _mounts_under("/sys/fs/cgroup")
    if not mounts:
        pytest.skip("no cgroup filesystem mounted under /sys/fs/cgroup")
    layout = detect_layout("/sys/fs/cgroup")
    for h in layout.controllers.values():
        expected = "cgroup" if h.version == 1 else "cgroup2"
        assert mounts[os.path.realpath(h.mount)] == expected
    kinds = set(mounts.values())
    expected_mode = "hybrid" if kinds == {"cgroup", "cgroup2"} else ("v2" if kinds == {"cgroup2"} else "v1")
    assert layout.mode == expected_mode
