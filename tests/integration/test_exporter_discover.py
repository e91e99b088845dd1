"""`shimstats exporter --discover` following sandboxes as they come, go, hang and recover.

The Kata parts are the stand-ins of tests/kata_standins.py: a shim's management socket answering
``/agent-url`` as kata-containers' shim_management.go does, with a hybrid-vsock URL
(``hvsock://<VMM socket>:1024``, Cloud Hypervisor's and Firecracker's form) whose socket is a
HybridVsockMuxer splicing ``CONNECT 2048`` to a real ``python -m guest_agent`` serving a captured kernel's
cgroup files. The exporter is the real process; it asks each shim where the agent is, replaces Kata's port
by 2048 and dials through the muxer. No CRI here (``--cri none``): each sandbox is exported by its id, and
the sandbox ids are the fixtures' container ids, so the agent knows them.

A paused VM is a guest agent stopped with SIGSTOP: its connection stays open and nothing answers.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containerd_env import Containerd
from tests.integration.cri_records import NS
from tests.integration.cri_records import delete_record as _delete
from tests.integration.cri_records import pod_record as _pod_container
from tests.integration.exporter_helpers import (
    CONTAINER_FIXTURES,
    ExporterProcess,
    Series,
    ids,
    truth,
    value,
)
from tests.integration.harness import AgentProcess, Fixture, short_tmp
from tests.kata_standins import KataShimStandIn, muxer_in_thread

KATA_AGENT_PORT = 1024


class FakeSandbox:
    """One Kata sandbox as the host sees it: shim socket under ``root``, VMM socket, guest agent inside."""

    def __init__(self, root: Path, directory: Path, fx: Fixture, sandbox_id: str = "") -> None:
        self.id = sandbox_id or fx.request_id
        self.fx = fx
        directory.mkdir()
        self.parts = contextlib.ExitStack()
        self.agent = self.parts.enter_context(AgentProcess(directory, fx.agent_args()))
        self.parts.enter_context(muxer_in_thread(directory / "clh.sock", self.agent.socket))
        url = f"hvsock://{directory / 'clh.sock'}:{KATA_AGENT_PORT}"
        self.shim = self.parts.enter_context(KataShimStandIn(root, self.id, url))

    def remove(self) -> None:
        """The pod is deleted: the shim exits (its socket goes with it) and the VM stops."""
        self.parts.close()


@contextlib.contextmanager
def sandboxes(root: Path, directory: Path, fixtures: list[Fixture]) -> Iterator[list[FakeSandbox]]:
    made: list[FakeSandbox] = []
    try:
        for n, fx in enumerate(fixtures):
            made.append(FakeSandbox(root, directory / f"vm{n}", fx))
        yield made
    finally:
        for s in made:
            with contextlib.suppress(Exception):
                s.remove()


def up(series: Series) -> dict[str, float]:
    return {labels["sandbox"]: v for labels, v in series.get("shimstats_agent_up", [])}


@pytest.mark.slow
def test_sandboxes_come_and_go_quietly_and_a_paused_one_is_named_once() -> None:
    by_id = {fx.request_id: fx for fx in reversed(CONTAINER_FIXTURES)}  # one fixture per container id
    chosen = [
        by_id["shimstats-fx-anon"],
        by_id["shimstats-fx-inactive-file"],
        by_id["shimstats-fx-active-file"],
    ]
    with short_tmp() as directory:
        root = directory / "sbs"
        root.mkdir()
        with sandboxes(root, directory, chosen[:2]) as made:
            a, b = made
            args = ("--discover", "--kata-root", str(root), "--cri", "none", "--timeout", "1")
            with ExporterProcess(directory, *args) as exporter:
                first, _ = exporter.scrape()
                made.append(FakeSandbox(root, directory / "vm2", chosen[2]))
                c = made[2]
                grown, _ = exporter.scrape()
                b.remove()
                made.remove(b)
                shrunk = [exporter.scrape()[0] for _ in range(3)]
                quiet_lines = exporter.log_lines()
                assert a.agent.process is not None
                a.agent.process.send_signal(signal.SIGSTOP)
                paused = [exporter.scrape()[0] for _ in range(2)]
                a.agent.process.send_signal(signal.SIGCONT)
                back, _ = exporter.scrape()
                assert exporter.stop() == 0
                lines = exporter.log_lines()

    ws = {s.id: truth(s.fx)["container_memory_working_set_bytes"] for s in (a, b, c)}
    # every sandbox found, by its id, with the working set its guest's cgroup files give
    assert up(first) == {a.id: 1.0, b.id: 1.0}
    for s in (a, b):
        assert value(first, "container_memory_working_set_bytes", sandbox=s.id, name=s.id) == ws[s.id]
    assert up(grown) == {a.id: 1.0, b.id: 1.0, c.id: 1.0}
    assert value(grown, "container_memory_working_set_bytes", sandbox=c.id) == ws[c.id]
    # the deleted pod leaves every series at the next scrape: no agent_up 0, no error counted
    about_b = [line["msg"] for line in quiet_lines if line.get("sandbox") == b.id]
    assert about_b == [f"exporting container {b.id}"]  # and no line about it at any of three scrapes
    for series in shrunk:
        assert up(series) == {a.id: 1.0, c.id: 1.0}
        assert ids(series, "container_memory_working_set_bytes") == {a.id, c.id}
        assert all(labels["sandbox"] != b.id for labels, _ in series.get("shimstats_agent_errors_total", []))
    # and is not a warning: the exporter logged nothing about it, three scrapes long
    assert [line for line in quiet_lines if line["level"] in ("warning", "error")] == []
    # the paused VM: agent_up 0 for it alone, the others still answered within the same scrape
    for series in paused:
        assert up(series) == {a.id: 0.0, c.id: 1.0}
        assert ids(series, "container_memory_working_set_bytes") == {c.id}
    assert value(paused[1], "shimstats_agent_errors_total", sandbox=a.id, code="DEADLINE_EXCEEDED") == 2
    # named once in the log, and once more when it answers again
    about_a = [(line["level"], line["msg"]) for line in lines if line.get("sandbox") == a.id]
    warnings = [msg for level, msg in about_a if level == "warning"]
    assert len(warnings) == 1, about_a
    assert warnings[0].startswith("guest agent not answering")
    assert ("info", "agent reachable again") in about_a
    assert up(back) == {a.id: 1.0, c.id: 1.0}
    assert value(back, "container_memory_working_set_bytes", sandbox=a.id) == ws[a.id]
    # each container announced once, at the info level the shipped unit logs at
    announced = [line["msg"] for line in lines if line["msg"].startswith("exporting container")]
    assert sorted(announced) == sorted(f"exporting container {s.id}" for s in (a, b, c))


@pytest.mark.containerd
def test_names_from_containerds_containers_api_when_no_cri_answers(containerd: Containerd) -> None:
    """The exporter's fallback: the test containerd has no CRI plugin, so the pod and container names come
    from the labels and the sandbox-id annotation containerd's CRI plugin writes on its container records;
    the pod's deletion (its records gone) takes its series out at the next scrape, quietly."""
    fx = {f.request_id: f for f in CONTAINER_FIXTURES}["shimstats-fx-inactive-file"]
    with short_tmp() as directory:
        root = directory / "sbs"
        root.mkdir()
        made = [FakeSandbox(root, directory / "vm", fx, sandbox_id="sbx-fallback")]
        pod = _pod_container(containerd, directory, "sbx-fallback", "web-0", kind="sandbox")
        app = _pod_container(
            containerd, directory, fx.request_id, "web-0", kind="container", name="nginx", sandbox=pod
        )
        try:
            args = ("--discover", "--kata-root", str(root), "--cri", f"unix://{containerd.address}")
            with ExporterProcess(directory, *args) as exporter:
                named, _ = exporter.scrape()
                _delete(containerd, app)
                _delete(containerd, pod)
                deleted = [exporter.scrape()[0] for _ in range(2)]
                assert exporter.stop() == 0
                lines = exporter.log_lines()
        finally:
            listed = containerd.ctr("containers", "list", "-q", namespace=NS).stdout.split()
            for cid in {app, pod} & set(listed):
                _delete(containerd, cid)
            for s in made:
                s.remove()

    [(labels, working_set)] = named["container_memory_working_set_bytes"]
    assert {k: labels[k] for k in ("name", "container", "pod", "namespace", "sandbox")} == {
        "name": fx.request_id,
        "container": "nginx",
        "pod": "web-0",
        "namespace": "shop",
        "sandbox": "sbx-fallback",
    }
    assert working_set == truth(fx)["container_memory_working_set_bytes"]
    assert value(named, "shimstats_agent_up", sandbox="sbx-fallback", pod="web-0", namespace="shop") == 1.0
    for series in deleted:  # the records are gone, the VM still runs: nothing of it is exported
        assert "container_memory_working_set_bytes" not in series
        assert up(series) == {}
        assert "shimstats_agent_errors_total" not in series
    # the CRI's absence is said once, not per scrape
    cri_lines = [line for line in lines if "CRI" in line["msg"]]
    assert len(cri_lines) <= 1, cri_lines
    assert [line for line in lines if line["level"] == "error"] == []
