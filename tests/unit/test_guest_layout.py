"""Layout detection (guest_agent.layout) on small trees shaped like /sys/fs/cgroup, and on the live one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guest_agent.layout import Hierarchy, LayoutError, detect_layout, parse_mountinfo


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


# ---------------------------------------------------------------------------------------------------------
# Hierarchies from mountinfo (issue 15 §2). The mountinfo lines below are cgroup lines of runc's own test
# inputs (opencontainers/cgroups utils_test.go: fedoraMountinfo, bedrockMountinfo, cgroup2Mountinfo), with
# runc's expectation: every listed controller is found, at the mount point of the line naming it.

FEDORA = """\
23 16 0:18 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs rw,seclabel,mode=755
24 23 0:19 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,\
release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
26 23 0:21 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup \
rw,cpuset,clone_children
27 23 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup \
rw,cpuacct,cpu,clone_children
28 23 0:23 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup \
rw,memory,clone_children
32 23 0:27 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup \
rw,blkio,clone_children
34 23 0:29 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup \
rw,hugetlb,clone_children
35 1 253:2 / / rw,relatime shared:1 - ext4 /dev/mapper/ssd-root--f20 rw,seclabel,data=ordered
31 21 0:23 / /DATA/foo_bla_bla rw,relatime - cifs //foo/BLA\\040BLA\\040BLA/ rw,sec=ntlm,cache=loose,\
unc=\\\\foo\\BLA BLA BLA,username=my_login
"""

BEDROCK = """\
120 17 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:16 - tmpfs tmpfs ro,mode=755
144 124 0:32 / /bedrock/strata/arch/sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime \
shared:48 - \
cgroup cgroup rw,net_cls,net_prio
140 120 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:48 - cgroup cgroup \
rw,net_cls,net_prio
154 124 0:34 / /bedrock/strata/arch/sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime \
shared:50 - cgroup \
cgroup rw,cpu,cpuacct
150 120 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:50 - cgroup cgroup \
rw,cpu,cpuacct
165 120 0:37 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:53 - cgroup cgroup rw,memory
175 120 0:39 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:55 - cgroup cgroup rw,pids
"""

CGROUP2_SYSTEMD = """\
25 18 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,seclabel,mode=755
26 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup rw
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup \
rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup \
rw,net_cls,net_prio
32 25 0:30 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,blkio
38 25 0:36 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,pids
"""


def mountinfo_file(tmp_path: Path, text: str, root: Path) -> str:
    """``text`` with /sys/fs/cgroup moved to ``root`` (so cgroup.controllers can be written), as a file."""
    path = tmp_path / "mountinfo"
    path.write_text(text.replace("/sys/fs/cgroup", str(root)))
    return str(path)


def test_parse_mountinfo_keeps_cgroup_lines_their_options_and_devices():
    mounts = parse_mountinfo(FEDORA)
    assert [m.mount_point for m in mounts] == [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/blkio",
        "/sys/fs/cgroup/hugetlb",
    ]
    cpu = mounts[2]
    assert {"cpu", "cpuacct"} <= cpu.options
    assert cpu.device == os.makedev(0, 22)
    assert cpu.version == 1
    assert cpu.root == "/"


def test_mountinfo_unescapes_mount_points():
    line = r"40 23 0:40 / /sys/fs/cgroup/my\040mem rw - cgroup cgroup rw,memory"
    assert parse_mountinfo(line)[0].mount_point == "/sys/fs/cgroup/my mem"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            FEDORA,
            {
                "memory": "memory",
                "cpu": "cpu,cpuacct",
                "cpuacct": "cpu,cpuacct",
                "blkio": "blkio",
                "hugetlb": "hugetlb",
            },
        ),
        (BEDROCK, {"memory": "memory", "cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "pids": "pids"}),
    ],
    ids=["fedora", "bedrock"],
)
def test_runcs_mountinfo_inputs_give_each_controller_its_mount(tmp_path, text, expected):
    root = tmp_path / "cg"
    layout = detect_layout(str(root), mountinfo=mountinfo_file(tmp_path, text, root))
    assert layout.mode == "v1"
    assert {n: h.mount for n, h in layout.controllers.items()} == {
        n: f"{root}/{d}" for n, d in expected.items()
    }
    assert all(h.version == 1 for h in layout.controllers.values())
    # bedrock's other strata mount the same hierarchies outside the root: never chosen
    assert layout.mounted_devices == frozenset(
        m.device for m in parse_mountinfo(text) if m.mount_point.startswith("/sys/fs/cgroup/")
    )


def test_a_cgroup2_mount_beside_v1_ones_makes_a_hybrid(tmp_path):
    # runc's TestIgnoreCgroup2Mount input: cgroup2 at /sys/fs/cgroup/systemd is not a v1 hierarchy.
    root = tmp_path / "cg"
    (root / "systemd").mkdir(parents=True)
    (root / "systemd" / "cgroup.controllers").write_text("hugetlb\n")
    layout = detect_layout(str(root), mountinfo=mountinfo_file(tmp_path, CGROUP2_SYSTEMD, root))
    assert layout.mode == "hybrid"
    assert layout.controllers["cpu"] == Hierarchy(1, f"{root}/cpu,cpuacct")
    assert layout.controllers["hugetlb"] == Hierarchy(2, f"{root}/systemd")


def test_a_cgroup2_mount_at_the_root_is_pure_v2(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    text = f"30 1 0:26 / {root} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    (tmp_path / "mountinfo").write_text(text)
    layout = detect_layout(str(root), mountinfo=str(tmp_path / "mountinfo"))
    assert layout.mode == "v2"
    assert set(layout.controllers) == {"memory", "cpu", "pids", "blkio"}
    assert layout.mounted_devices == frozenset({os.makedev(0, 26)})


def test_a_whole_hierarchy_mount_wins_over_a_bind_mounted_subtree(tmp_path):
    # runc's TestFindCgroupMountpointAndRoot shape: one hierarchy seen twice; the one showing "/" is used.
    root = tmp_path / "cg"
    text = (
        f"35 27 0:29 /kubepods {root}/memory-sub rw - cgroup cgroup rw,memory\n"
        f"36 27 0:29 / {root}/memory rw - cgroup cgroup rw,memory\n"
    )
    layout = detect_layout(str(root), mountinfo=mountinfo_file(tmp_path, text, root))
    assert layout.controllers["memory"] == Hierarchy(1, f"{root}/memory")


def test_mountinfo_without_cgroup_mounts_under_the_root_falls_back_to_names(tmp_path):
    # A captured tree: mountinfo (FEDORA, all under /sys/fs/cgroup) says nothing about tmp_path.
    make_v1(tmp_path, ["memory"])
    (tmp_path / "mountinfo").write_text(FEDORA)
    layout = detect_layout(str(tmp_path), mountinfo=str(tmp_path / "mountinfo"))
    assert layout.controllers == {"memory": Hierarchy(1, str(tmp_path / "memory"))}
    assert layout.mounted_devices == frozenset()


def test_a_captured_tree_with_comma_joined_names_and_no_symlinks(tmp_path):
    make_v1(tmp_path, ["memory", "cpu,cpuacct", "net_cls,net_prio", "pids"])
    layout = detect_layout(str(tmp_path), mountinfo=str(tmp_path / "absent"))
    assert layout.mode == "v1"
    assert layout.controllers["cpu"] == Hierarchy(1, str(tmp_path / "cpu,cpuacct"))
    assert layout.controllers["cpuacct"] == Hierarchy(1, str(tmp_path / "cpu,cpuacct"))
    assert "net_cls" not in {h.mount for h in layout.controllers.values()}


def test_a_comma_joined_name_yields_to_an_exact_one(tmp_path):
    make_v1(tmp_path, ["memory", "cpu", "cpu,cpuacct"])
    layout = detect_layout(str(tmp_path), mountinfo=str(tmp_path / "absent"))
    assert layout.controllers["cpu"] == Hierarchy(1, str(tmp_path / "cpu"))
    assert layout.controllers["cpuacct"] == Hierarchy(1, str(tmp_path / "cpu,cpuacct"))
