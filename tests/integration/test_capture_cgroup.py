"""hack/capture-cgroup.sh on a live child cgroup of this machine: the fixture contract holds.

The script is how every fixture in tests/fixtures/cgroupfs is made (on this host and inside qemu
guests), so its output must be a tree the guest agent reads exactly like the live cgroup.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader

pytestmark = pytest.mark.live_cgroup

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "capture-cgroup.sh"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "blkio")


@pytest.fixture
def live_cgroup() -> Iterator[str]:
    """A child cgroup in every v1 hierarchy here, holding one sleeping process; removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    if not Path("/sys/fs/cgroup/memory/memory.usage_in_bytes").exists():
        pytest.skip("this machine has no cgroup v1 memory hierarchy")
    path = f"/ss-capture-{uuid.uuid4().hex[:8]}"
    dirs = [Path("/sys/fs/cgroup", c + path) for c in V1_CONTROLLERS if Path("/sys/fs/cgroup", c).is_dir()]
    for d in dirs:
        d.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for d in dirs:
            (d / "cgroup.procs").write_text(str(sleeper.pid))
        yield path
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in dirs:
            d.rmdir()


def test_capture_is_a_tree_the_agent_reads_like_the_live_cgroup(live_cgroup: str, tmp_path: Path) -> None:
    out = tmp_path / "fixture"
    env = {**os.environ, "OUT_DIR": str(out)}
    subprocess.run(
        ["sh", str(SCRIPT), live_cgroup, "capture-test", "--workload", "sleep 60"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )

    meta = json.loads((out / "meta.json").read_text())
    live_layout = detect_layout("/sys/fs/cgroup")
    assert meta["container_path"] == live_cgroup
    assert meta["container_id"] == live_cgroup.lstrip("/")
    assert meta["mode"] == live_layout.mode
    assert meta["kernel"] == os.uname().release
    assert (out / "meminfo").read_text().startswith("MemTotal:")
    assert "sleep 60" in (out / "README.md").read_text()

    captured_layout = detect_layout(str(out / "cgroup"))
    assert captured_layout.mode == live_layout.mode
    assert set(captured_layout.controllers) == set(live_layout.controllers)

    live = CgroupReader(live_layout).read(live_cgroup)
    captured = CgroupReader(captured_layout, meminfo=str(out / "meminfo")).read(live_cgroup)
    assert captured.memory is not None
    assert live.memory is not None
    # A sleeping process: memory and pids do not move between the capture and our read.
    assert captured.memory.stat.keys() == live.memory.stat.keys()
    assert abs(captured.memory.usage.usage - live.memory.usage.usage) <= 64 * 4096
    assert captured.memory.usage.limit == live.memory.usage.limit
    assert captured.pids == live.pids
