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
import subprocess

import pytest

from tests.integration.harness import CLI, REPO, AgentProcess, ServeProcess, short_tmp
from tests.integration.live_workload import (  # noqa: F401 (fixtures used by name)
    CGROUPFS,
    READ_MIB,
    TOLERANCE,
    WRITE_MIB,
    kernel_working_set,
    live_cgroup,
    page_cache_workload,
)

pytestmark = pytest.mark.live_cgroup


def test_live_working_set_matches_the_kernel(page_cache_workload: str) -> None:  # noqa: F811
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
