"""`shimstats discover` on a node with containerd 1.6's CRI plugin (tests/cri_env.py): pods created, a
container restarted (new id), a pod deleted; discover follows each step, its names equal what the CRI
lists, and the agent it finds reports the working set of the container's own cgroup.

Kata's part is stood in for (tests/kata_standins.py): per pod, a shim management socket named after the pod
sandbox id, as Kata's shim serves it, pointing at a hybrid-vsock muxer; behind the muxer, on port 2048, our
guest agent reads the runc container's real cgroup (the guest side of a Kata VM cannot run here).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shimstats.discovery import KataAgentClient, KataSpec
from tests.cri_env import (
    BUSYBOX_IMAGE,
    POD_NAMESPACE,
    CriContainerd,
    host_working_set,
    remove_container,
    start_sleeping_container,
)
from tests.integration.harness import CLI, REPO, AgentProcess
from tests.kata_standins import KataShimStandIn, muxer_in_thread

pytestmark = pytest.mark.containerd

KATA_URL_PORT = 1024


@pytest.fixture(scope="module")
def cri(containerd_available: None) -> Iterator[CriContainerd]:
    with CriContainerd() as containerd:
        yield containerd


def _discover(root: Path, cri: CriContainerd) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [*CLI, "discover", "--kata-root", str(root), "--cri", cri.cri_address, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


async def _agent_working_set(root: Path, sandbox_id: str, container_id: str) -> int:
    agent = KataAgentClient(KataSpec(sandbox_id, 2048, (str(root),)))
    try:
        answer = await agent.stats_container(container_id)
    finally:
        await agent.close()
    stats = answer.cgroup_stats.memory_stats
    return max(0, stats.usage.usage - stats.stats["total_inactive_file"])


def test_discover_follows_pods_through_restart_and_deletion(cri: CriContainerd, sock_dir: Path) -> None:
    root = sock_dir / "sbs"
    pod = cri.run_pod(f"web-{time.monotonic_ns() % 10**6}", "runc")
    try:
        app = start_sleeping_container(cri, pod, "app")
        agent_dir = sock_dir / "agent"
        agent_dir.mkdir()
        agent = AgentProcess(agent_dir, ["--container", f"{app.id}={app.cgroup}"])
        with (
            agent,
            muxer_in_thread(sock_dir / "clh.sock", {2048: agent.socket}),
            KataShimStandIn(root, pod.id, f"hvsock://{sock_dir}/clh.sock:{KATA_URL_PORT}"),
        ):
            code, found = _discover(root, cri)
            assert code == 0, found
            [sandbox] = found["sandboxes"]
            assert (sandbox["id"], sandbox["pod"], sandbox["namespace"]) == (pod.id, pod.name, POD_NAMESPACE)
            assert sandbox["address"] == f"hvsock://{sock_dir}/clh.sock:2048"
            assert sandbox["containers"] == [
                {
                    "id": app.id,
                    "pod": pod.name,
                    "namespace": POD_NAMESPACE,
                    "container": "app",
                    "image": BUSYBOX_IMAGE,
                }
            ]
            assert found["names_from"] == "cri"
            # The CRI's own listing, for the same containers: the labels are what the CRI says.
            listed = {c.id: (c.pod_name, c.pod_namespace, c.name) for c in cri.client.list_containers()}
            assert listed[app.id] == (pod.name, POD_NAMESPACE, "app")
            # The agent discovery found reports this container's cgroup (read around the call).
            before = host_working_set(app.cgroup)
            reported = asyncio.run(_agent_working_set(root, pod.id, app.id))
            after = host_working_set(app.cgroup)
            assert min(before, after) - 512 * 1024 <= reported <= max(before, after) + 512 * 1024

            remove_container(cri, app)  # restarted under a new id
            app2 = start_sleeping_container(cri, pod, "app")
            code, found = _discover(root, cri)
            [sandbox] = found["sandboxes"]
            assert [c["id"] for c in sandbox["containers"]] == [app2.id]

        cri.remove_pod(pod.id)  # the pod is deleted; Kata's shim exits and its socket goes with it
        code, found = _discover(root, cri)
        assert (code, found["sandboxes"]) == (0, [])
        assert pod.id not in {p.id for p in cri.client.list_pod_sandboxes()}
    finally:
        if pod.id in {p.id for p in cri.client.list_pod_sandboxes()}:
            cri.remove_pod(pod.id)
        cri.remove_pod_cgroup(pod)
