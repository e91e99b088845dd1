"""The container image: hack/build-image.sh builds deploy/image/Containerfile with Debian's buildah from
Debian packages only (debootstrap + this checkout's wheels), and the exporter runs from the image.

It runs the way the DaemonSet runs it: uid 0 with every capability dropped, the agent's socket directory
bind-mounted read-only (deploy/kubernetes/daemonset.yaml explains why that is enough). The guest agent is
a real ``python -m guest_agent`` on the host serving a captured kernel's files; the figures scraped from
the containerised exporter must be the fixture's, by cAdvisor's rules (tests/integration/test_exporter.py).

Set ROOTFS_CACHE=/var/tmp/DIR to reuse a debootstrap tree between runs (hack/build-image.sh).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import REPO, AgentProcess, end_process, free_port, short_tmp, skip_unless
from tests.integration.test_exporter import CONTAINER_FIXTURES, truth

BUILD_TIMEOUT = 1200
START_TIMEOUT = 60.0

pytestmark = pytest.mark.slow


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap, buildah)"
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install buildah debootstrap)"
    return None


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image built by hack/build-image.sh under a tag of its own; removed afterwards."""
    skip_unless(_unavailable())
    tag = f"localhost/shimstats-test:{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        ["bash", "hack/build-image.sh", tag],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == tag
    try:
        yield tag
    finally:
        subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, timeout=120)


@contextlib.contextmanager
def working_container(tag: str) -> Iterator[str]:
    name = subprocess.run(
        ["buildah", "from", "--pull=never", tag], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)


def run_in(container: str, mounts: list[str], *argv: str) -> list[str]:
    """``buildah run`` as the DaemonSet runs the exporter: host network, uid 0, no capabilities."""
    volumes = [arg for mount in mounts for arg in ("--volume", mount)]
    return ["buildah", "run", "--network", "host", "--user", "0:0", "--cap-drop", "all", *volumes, container,
            "--", *argv]  # fmt: skip


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, f"nothing serves {url}"
            time.sleep(0.3)
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series.setdefault(s.name, []).append((s.labels, s.value))
    return series


def test_the_image_runs_without_capabilities_as_the_daemonset_does(image: str) -> None:
    with working_container(image) as container:
        done = subprocess.run(
            run_in(container, [], "sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status; id -u"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        version = subprocess.run(
            run_in(container, [], "shimstats", "--version"), capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[-1] == "0"
    assert lines[:-1] == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000", "CapBnd:",
                          "0000000000000000"]  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == ["shimstats", "0.1.0"]


def test_the_exporter_from_the_image_reads_a_real_agent_through_a_read_only_mount(image: str) -> None:
    fx = next(f for f in CONTAINER_FIXTURES if f.guest_version == 2)
    port = free_port()
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        mounts = [f"{directory}:{directory}:ro"]
        argv = ["shimstats", "exporter", "--listen-http", f"127.0.0.1:{port}", "--agent", agent.address]
        argv += ["--container", fx.request_id, "--kata-host-cgroup", "v1"]
        with working_container(image) as container, open(directory / "exporter.log", "wb") as log:
            process = subprocess.Popen(run_in(container, mounts, *argv), stdout=log, stderr=log)
            try:
                series = scrape(f"http://127.0.0.1:{port}/metrics")
            finally:
                end_process(process, timeout=30)
            log_text = (directory / "exporter.log").read_text()

    def value(name: str) -> float:
        # the one container exported (its id is in cAdvisor's id or name label, by exporter version)
        (found,) = [
            v for labels, v in series[name] if fx.request_id in (labels.get("id"), labels.get("name"))
        ]
        return found

    expected = truth(fx)
    for name in (
        "container_memory_working_set_bytes",
        "container_memory_usage_bytes",
        "container_memory_total_inactive_file_bytes",
        "container_spec_memory_limit_bytes",
    ):
        assert value(name) == expected[name], (name, log_text)
    assert [v for labels, v in series["shimstats_agent_up"]] == [1.0]
