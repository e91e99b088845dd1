"""check-resources on this machine's live cgroup v1 kernel: a child cgroup written as a runtime writes it.

For a pod asking cpu 250m/1500m and memory 1G (limit), a v1 node's kubelet sends cpu_shares 256,
cpu_quota 150000, cpu_period 100000, memory_limit_in_bytes 1000000000 and (NoSwap) memsw = the limit; the
test writes exactly those into cpu.shares, cpu.cfs_period_us, cpu.cfs_quota_us, memory.limit_in_bytes and
memory.memsw.limit_in_bytes of a fresh child cgroup with a sleeping process in it, as runc does on v1. The
agent reads the live /sys/fs/cgroup. Root only; everything created is removed, even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from shimstats import cli
from tests.integration.guest_agent_helpers import agent

pytestmark = [
    pytest.mark.live_cgroup,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
FLAGS = ["--cpu-request", "250m", "--cpu-limit", "1500m", "--memory-limit", "1G", "--node-cgroup", "v1"]
WRITES = [  # in this order: memsw may not be set below the memory limit
    ("cpu", "cpu.shares", "256"),
    ("cpu", "cpu.cfs_period_us", "100000"),
    ("cpu", "cpu.cfs_quota_us", "150000"),
    ("memory", "memory.limit_in_bytes", "1000000000"),
    ("memory", "memory.memsw.limit_in_bytes", "1000000000"),
]


class Container:
    """A child cgroup in the cpu, memory and pids hierarchies, with one sleeping process in it."""

    def __init__(self, dirs: dict[str, Path], proc: subprocess.Popen[bytes]) -> None:
        self.dirs = dirs
        self.proc = proc

    @property
    def name(self) -> str:
        return self.dirs["memory"].name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        for directory in self.dirs.values():
            if directory.exists():
                directory.rmdir()


@pytest.fixture
def container() -> Iterator[Container]:
    layout = detect_layout(str(CGROUP_ROOT))
    if layout.mode == "v2" or any(layout.controllers[c].version != 1 for c in ("cpu", "memory", "pids")):
        pytest.skip("needs v1 cpu, memory and pids hierarchies")
    name = f"shimstats-res-{uuid.uuid4().hex[:12]}"
    dirs = {c: Path(os.path.realpath(layout.controllers[c].mount)) / name for c in ("cpu", "memory", "pids")}
    proc = subprocess.Popen(["sleep", "120"])
    made = Container({}, proc)
    try:
        for controller, directory in dirs.items():
            directory.mkdir()
            made.dirs[controller] = directory
        for controller, file, value in WRITES:
            target = dirs[controller] / file
            if target.exists():  # memsw exists only with swap accounting
                target.write_text(value)
        for directory in dirs.values():
            (directory / "cgroup.procs").write_text(str(proc.pid))
        yield made
    finally:
        made.remove()


def check(capsys: pytest.CaptureFixture[str], address: str, name: str, *flags: str) -> tuple[int, str, str]:
    code = cli.main(["check-resources", "--agent", address, "--id", name, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_live_v1_cgroup_passes_then_fails_naming_the_changed_setting(container, sock_dir, capsys):
    address = f"unix://{sock_dir}/a.sock"
    with agent(address, CGROUP_ROOT):
        code, out, _ = check(capsys, address, container.name, *FLAGS, "--json")
        report = json.loads(out)
        assert (code, report["verdict"]) == (0, "match"), out
        rows = {row["file"]: row for row in report["rows"]}
        assert rows["cpu.shares"]["applied"] == "256"
        assert rows["cpu.cfs_quota_us"]["applied"] == "150000"
        # The kernel keeps whole pages: 1000000000 bytes read back as 244140 pages of 4096.
        page = os.sysconf("SC_PAGE_SIZE")
        assert rows["memory.limit_in_bytes"]["applied"] == str(1000000000 // page * page)
        assert all(row["verdict"] in ("ok", "not checked") for row in rows.values())

        (container.dirs["cpu"] / "cpu.cfs_quota_us").write_text("200000")
        code, out, _ = check(capsys, address, container.name, *FLAGS)
        assert code == 1
        assert "verdict: MISMATCH in cpu.cfs_quota_us" in out


def test_live_v1_container_that_starts_during_the_wait_is_checked(container, sock_dir, capsys):
    address = f"unix://{sock_dir}/a.sock"
    container.stop()  # restarting: the cgroup and its settings are there, no process yet
    late = subprocess.Popen(["sleep", "120"])

    def start() -> None:
        for directory in container.dirs.values():
            (directory / "cgroup.procs").write_text(str(late.pid))

    timer = threading.Timer(0.4, start)
    try:
        with agent(address, CGROUP_ROOT):
            timer.start()
            try:
                # 5 s: a v1 pid list read through a held fd went stale for some 12 s here (see _populated)
                code, out, _ = check(capsys, address, container.name, *FLAGS, "--wait", "5s", "--json")
            finally:
                timer.join()
    finally:
        late.kill()
        late.wait(timeout=10)
    report = json.loads(out)
    assert (code, report["verdict"]) == (0, "match")
    assert report["attempts"] > 1  # the empty cgroup was not checked, the running one was
    assert 0.4 <= report["waited_seconds"] < 5


def test_live_v1_cgroup_removed_mid_wait_is_retried_then_could_not_check(container, sock_dir, capsys):
    address = f"unix://{sock_dir}/a.sock"
    container.stop()  # the container exits: its cgroup is empty, so it is not checked
    timer = threading.Timer(0.4, container.remove)  # ...and then its cgroup goes
    with agent(address, CGROUP_ROOT):
        timer.start()
        try:
            code, out, err = check(capsys, address, container.name, *FLAGS, "--wait", "1500ms")
        finally:
            timer.join()
    assert (code, out) == (2, "")
    assert not container.dirs["memory"].exists()
    assert f"NOT_FOUND: container {container.name!r}" in err
    attempts = int(err.split(" s and ")[1].split()[0])
    waited = float(err.split("gave up after ")[1].split(" s and")[0])
    assert waited >= 1.5  # the whole --wait (a loaded machine may overrun it by a tenth; not a timing test)
    assert attempts > 2  # not running, then not found, each retried with backoff
