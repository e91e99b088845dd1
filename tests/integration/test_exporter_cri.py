"""`shimstats exporter --discover` on a node with containerd 1.6's CRI plugin (tests/cri_env.py): a pod with
two containers created, one restarted under a new id, the pod deleted; the exporter follows each step at
the next scrape, its labels are what the CRI lists, and the working set is the container cgroup's own.

Kata's part is stood in for as in test_discover_cri.py: a shim management socket named after the pod
sandbox id (tests/kata_standins.py) pointing at a hybrid-vsock muxer, and behind it our guest agent reading
the runc containers' real cgroups (the guest side of a Kata VM cannot run here). The agent finds each
container's cgroup by its directory name, as it does in a guest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats._proto.cri.runtime.v1 import api_pb2
from tests.cri_env import BUSYBOX_IMAGE, POD_NAMESPACE, CriContainerd, Pod
from tests.integration.harness import AgentProcess, short_tmp
from tests.integration.test_discover_cri import _remove, _start, _working_set
from tests.integration.test_exporter import ExporterProcess, Series, ids, value
from tests.kata_standins import KataShimStandIn, muxer_in_thread

pytestmark = pytest.mark.containerd

KATA_URL_PORT = 1024
SLACK = 512 * 1024
"""Bytes the working set may move between reading the cgroup and the exporter's read (a sleeping busybox)."""


@pytest.fixture(scope="module")
def cri(containerd_available: None) -> Iterator[CriContainerd]:
    with CriContainerd() as containerd:
        yield containerd


def _cri_listing(cri: CriContainerd) -> dict[str, tuple[str, str, str, str, str, float]]:
    """Container id → (pod, namespace, container, image, sandbox, created seconds) as the CRI lists them."""
    pods = {p.id: p for p in cri.client.list_pod_sandboxes()}
    listed = cri.client.call(cri.client.runtime.ListContainers, api_pb2.ListContainersRequest(), name="List")
    return {
        c.id: (
            pods[c.pod_sandbox_id].name,
            pods[c.pod_sandbox_id].namespace,
            c.metadata.name,
            c.image.image,
            c.pod_sandbox_id,
            c.created_at / 1e9,
        )
        for c in listed.containers
        if c.state == api_pb2.CONTAINER_RUNNING
    }


def _exported(series: Series) -> dict[str, tuple[str, str, str, str, str, float | None]]:
    """Container id → the same six facts from the exporter's labels and container_start_time_seconds."""
    found = {}
    for labels, _ in series.get("container_memory_working_set_bytes", []):
        started = value(series, "container_start_time_seconds", name=labels["name"])
        found[labels["name"]] = (
            labels["pod"],
            labels["namespace"],
            labels["container"],
            labels["image"],
            labels["sandbox"],
            started,
        )
    return found


def test_the_exporter_follows_a_pod_through_restart_and_deletion(cri: CriContainerd) -> None:
    with short_tmp() as tmp:
        root = tmp / "sbs"
        pod = cri.run_pod(f"shop-{time.monotonic_ns() % 10**6}", "runc")
        try:
            _follow(cri, pod, tmp, root)
        finally:
            if pod.id in {p.id for p in cri.client.list_pod_sandboxes()}:
                cri.remove_pod(pod.id)
            cri.remove_pod_cgroup(pod)


def _follow(cri: CriContainerd, pod: Pod, tmp: Path, root: Path) -> None:
    app, side = _start(cri, pod, "app"), _start(cri, pod, "side")
    (tmp / "agent").mkdir()
    with contextlib.ExitStack() as stack:
        # the guest agent finds containers by their cgroup directory under the memory hierarchy
        agent = stack.enter_context(AgentProcess(tmp / "agent", []))
        stack.enter_context(muxer_in_thread(tmp / "clh.sock", {2048: agent.socket}))
        shim = stack.enter_context(KataShimStandIn(root, pod.id, f"hvsock://{tmp}/clh.sock:{KATA_URL_PORT}"))
        args = ("--discover", "--kata-root", str(root), "--cri", cri.cri_address, "--timeout", "3")
        exporter = stack.enter_context(ExporterProcess(tmp, *args))

        before = {c.id: _working_set(c.cgroup) for c in (app, side)}
        first, _ = exporter.scrape()
        after = {c.id: _working_set(c.cgroup) for c in (app, side)}
        listing = _cri_listing(cri)

        _remove(cri, app)  # restarted under a new id
        app2 = _start(cri, pod, "app")
        restarted, _ = exporter.scrape()
        listing_restarted = _cri_listing(cri)

        cri.remove_pod(pod.id)  # the pod is deleted: the CRI forgets it, Kata's shim exits with its socket
        shim.stop()
        deleted = [exporter.scrape()[0] for _ in range(2)]
        assert exporter.stop() == 0
        lines = exporter.log_lines()

    # every running container, labelled as the CRI lists it, start time included
    assert _exported(first) == {c: listing[c] for c in (app.id, side.id)}
    assert {labels["image"] for labels, _ in first["container_memory_working_set_bytes"]} == {BUSYBOX_IMAGE}
    assert value(first, "shimstats_agent_up", sandbox=pod.id, pod=pod.name, namespace=POD_NAMESPACE) == 1
    for c in (app, side):
        ws = value(first, "container_memory_working_set_bytes", name=c.id)
        assert ws is not None
        assert min(before[c.id], after[c.id]) - SLACK <= ws <= max(before[c.id], after[c.id]) + SLACK
        assert value(first, "container_processes", name=c.id) == 1  # sleep
    # the restarted container: its old id gone at the next scrape, the new one there
    assert ids(restarted, "container_memory_working_set_bytes") == {app2.id, side.id}
    assert _exported(restarted) == {c: listing_restarted[c] for c in (app2.id, side.id)}
    # the deleted pod: nothing left, not even agent_up 0
    for series in deleted:
        assert "container_memory_working_set_bytes" not in series
        assert all(labels["sandbox"] != pod.id for labels, _ in series.get("shimstats_agent_up", []))
    # and no warning or error on the way: restarts and deletions are not failures
    assert [line for line in lines if line["level"] in ("warning", "error")] == []
    announced = sorted(line["msg"] for line in lines if line["msg"].startswith("exporting container"))
    assert announced == sorted(f"exporting container {c}" for c in (app.id, side.id, app2.id))
