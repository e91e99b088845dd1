"""The containerd harness itself: real containerd 1.6 + runc, real cgroups, real sockets."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.containerd_env import (
    BUSYBOX,
    INSTALL_HINT,
    PAGE_CACHE_BYTES,
    Container,
    Containerd,
    ContainerdUnavailable,
    busybox_rootfs,
    cgroup_mounts,
)

REPO = Path(__file__).resolve().parents[2]
#: How far memory.usage_in_bytes may move between our two reads around ctr's: the container sleeps,
#: so only kernel bookkeeping (slab, per-cpu batching of charges) moves it.
USAGE_TOLERANCE = 512 * 1024


def _read_int(path: Path) -> int:
    return int(path.read_text())


def _memory_stat(container: Container) -> dict[str, int]:
    lines = (container.memory_cgroup / "memory.stat").read_text().splitlines()
    return {key: int(value) for key, value in (line.split() for line in lines)}


@pytest.mark.containerd
def test_metrics_are_v1_and_match_the_cgroup(containerd: Containerd, busybox_container: Container) -> None:
    usage_file = busybox_container.memory_cgroup / "memory.usage_in_bytes"
    before = _read_int(usage_file)
    metrics = containerd.metrics_json(busybox_container)
    after = _read_int(usage_file)
    stat_after = _memory_stat(busybox_container)

    # io.containerd.cgroups.v1.Metrics: memory.usage is a MemoryEntry (v2 has a plain number there).
    usage = metrics["memory"]["usage"]["usage"]
    assert min(before, after) - USAGE_TOLERANCE <= usage <= max(before, after) + USAGE_TOLERANCE
    # The workload's page cache is there and charged to this cgroup, as ctr and the kernel both say.
    assert stat_after["total_cache"] >= PAGE_CACHE_BYTES
    assert abs(metrics["memory"]["total_cache"] - stat_after["total_cache"]) <= USAGE_TOLERANCE
    # ctr prints v1 metric names only when the shim's Any carries io.containerd.cgroups.v1.Metrics.
    table = containerd.metrics_table(busybox_container)
    assert "memory.usage_in_bytes" in table
    assert "memory.usage" not in table


@pytest.mark.containerd
def test_container_facts(containerd: Containerd, busybox_container: Container) -> None:
    c = busybox_container
    expected_name = hashlib.sha256(f"{containerd.address}/{c.namespace}/{c.id}".encode()).hexdigest()
    assert c.shim_socket == containerd.run_dir / "containerd" / "s" / expected_name
    assert stat.S_ISSOCK(c.shim_socket.stat().st_mode)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        s.connect(str(c.shim_socket))  # the runc shim listens there
    assert c.memory_cgroup.name == c.id
    assert c.memory_cgroup.parent.name == c.namespace
    assert str(c.pid) in (c.memory_cgroup / "cgroup.procs").read_text().split()
    assert os.readlink(f"/proc/{c.pid}/exe").endswith("busybox")


def _cgroup_dirs(namespace: str) -> list[Path]:
    return [mount / namespace for mount in cgroup_mounts() if (mount / namespace).exists()]


def _processes_in_mount_namespace(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/mnt").st_ino == inode:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


@pytest.mark.containerd
@pytest.mark.parametrize("round_", [1, 2])
def test_nothing_left_after_stop(containerd_available: None, round_: int) -> None:
    """Twice in a row (and beside the session instance): each one cleans up completely."""
    namespace = f"shimstats-cleanup-{uuid.uuid4().hex[:8]}"
    with Containerd() as instance:
        container = instance.run_busybox("sleeper", ["sleep", "3600"], namespace=namespace)
        pid, base_dir, mount_ns = instance.pid, instance.base_dir, instance.mount_namespace
        shims = instance.shim_pids()
        cgroups = _cgroup_dirs(namespace)
        assert mount_ns is not None
        assert len(shims) == 1
        assert container.memory_cgroup.parent in cgroups
        assert os.stat("/proc/self/ns/mnt").st_ino != mount_ns

    assert not Path(f"/proc/{pid}").exists()
    assert not Path(f"/proc/{container.pid}").exists()
    assert not Path(f"/proc/{shims[0]}").exists() or "Z" in Path(f"/proc/{shims[0]}/stat").read_text()
    assert _processes_in_mount_namespace(mount_ns) == []
    assert str(base_dir) not in Path("/proc/self/mountinfo").read_text()
    assert not base_dir.exists()
    assert _cgroup_dirs(namespace) == []


@pytest.mark.containerd
def test_up_and_down_scripts(containerd_available: None) -> None:
    parent = Path(tempfile.mkdtemp(prefix="ssu-", dir="/tmp"))  # short: see MAX_SOCKET_PATH
    base = parent / "i"
    try:
        _up_and_down(base)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _up_and_down(base: Path) -> None:
    up = subprocess.run(
        ["bash", str(REPO / "hack/containerd-up.sh"), str(base)], capture_output=True, text=True, timeout=30
    )
    assert up.returncode == 0, up.stderr
    printed = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line and line[0] != "#")
    address = printed["CONTAINERD_ADDRESS"]
    pid = int(printed["CONTAINERD_PID"])
    assert address == str(base / "containerd.sock")
    try:
        version = subprocess.run(["ctr", "--address", address, "version"], capture_output=True, timeout=10)
        assert version.returncode == 0
    finally:
        down = subprocess.run(
            ["bash", str(REPO / "hack/containerd-down.sh"), str(base)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert down.returncode == 0, down.stderr
    assert not base.exists()
    stat_file = Path(f"/proc/{pid}/stat")
    assert not stat_file.exists() or stat_file.read_text().rpartition(")")[2].split()[0] == "Z"


def test_busybox_rootfs_runs_applets(tmp_path: Path) -> None:
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} missing; {INSTALL_HINT}")
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    sh = rootfs / "bin" / "sh"
    assert os.readlink(sh) == "busybox"
    assert not (rootfs / "bin" / "busybox").is_symlink()
    out = subprocess.run([str(sh), "-c", "echo hi"], capture_output=True, text=True, timeout=10)
    assert out.stdout == "hi\n"


def test_missing_binaries_name_the_install_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no containerd, ctr, runc
    instance = Containerd()
    with pytest.raises(ContainerdUnavailable) as excinfo, instance:
        pass
    if os.geteuid() == 0:
        assert "hack/ci-install.sh" in str(excinfo.value)
        assert "containerd" in str(excinfo.value)
    assert not instance.base_dir.exists()
