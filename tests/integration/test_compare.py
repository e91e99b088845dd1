"""`shimstats compare` as a process: our v1 figures next to a live containerd's own Tasks.Metrics (gRPC).

For a runc container, containerd's Metrics come from the runc shim reading the container's cgroup; our
guest agent reads the same cgroup on this host. Both are read within a fraction of a second of each other
while the container sleeps, so they agree within USAGE_TOLERANCE (the kernel's per-cpu charge batching
moves v1 usage by up to a few hundred KiB between reads).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shimstats import cri
from tests.containerd_env import Container, Containerd
from tests.integration.harness import CLI, REPO, AgentProcess, fixtures, short_tmp

USAGE_TOLERANCE = 512 * 1024
BYTE_FIGURES = ("usage_bytes", "working_set_bytes", "available_bytes", "rss_bytes")
V2_ACTIVE = next(fx for fx in fixtures() if fx.name == "v2-6.1.0-56-amd64-container-active-file")


def compare_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "compare", *args], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


def columns(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["key"]: c for c in out["columns"]}


@pytest.mark.containerd
def test_our_v1_figures_equal_containerds_for_a_runc_container(
    containerd: Containerd, busybox_container: Container
) -> None:
    cgroup_path = f"/{busybox_container.namespace}/{busybox_container.id}"
    with (
        short_tmp() as tmp,
        AgentProcess(tmp, ["--container", f"{busybox_container.id}={cgroup_path}"]) as agent,
    ):
        proc = compare_cli(
            "--id",
            busybox_container.id,
            "--agent",
            agent.address,
            "--shim",
            f"unix://{busybox_container.shim_socket}",
            "--containerd",
            containerd.address,
            "--namespace",
            busybox_container.namespace,
            "--tolerance",
            str(USAGE_TOLERANCE),
            "--json",
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    cols = columns(out)
    ours, theirs, runc = cols["ours_v1"], cols["containerd"], cols["shim"]
    assert theirs["error"] is None
    assert theirs["type_url"] == ours["type_url"] == cri.V1_TYPE_URL
    for figure in BYTE_FIGURES:
        assert abs(ours["figures"][figure] - theirs["figures"][figure]) <= USAGE_TOLERANCE, figure
    for figure in ("page_faults", "major_page_faults"):  # the container sleeps: no fault in between
        assert ours["figures"][figure] == theirs["figures"][figure], figure
    # containerd passes the runc shim's answer through, and both agree with the guest's own figures.
    assert theirs["differs"] == runc["differs"] == ours["differs"] == {}
    assert out["guest"]["cgroup_version"] == 1


def test_compare_table_and_a_failing_live_source() -> None:
    missing = "/tmp/ss-no-such-containerd.sock"
    with short_tmp() as tmp, AgentProcess(tmp, V2_ACTIVE.agent_args()) as agent:
        proc = compare_cli("--id", V2_ACTIVE.request_id, "--agent", agent.address, "--containerd", missing)
    assert proc.returncode == 1, proc.stderr  # the table is still printed, the failed source named
    assert missing in proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("FIGURE"))
    for label in (
        "guest files",
        "ours v1",
        "ours v2",
        "Kata Go, v1 host",
        "Kata Go, v2 host",
        "Kata runtime-rs",
    ):
        assert label in header
    assert any(line.startswith("! containerd:") for line in lines)
    assert any(line.startswith("* Kata Go, v2 host, cpu user: user/system swapped") for line in lines)


def test_compare_exit_2_without_a_guest(tmp_path: Path) -> None:
    proc = compare_cli("--id", "x", "--agent", f"unix://{tmp_path}/no.sock")
    assert proc.returncode == 2
    assert "UNAVAILABLE" in proc.stderr
