"""At the kubelet's door: containerd 1.6's own CRI plugin reports our figures, equal to the cgroup's files.

The kubelet does not read a shim; it reads containerd's CRI (ContainerStats, ListContainerStats,
ListPodSandboxStats). This module runs Debian's containerd 1.6 with the CRI plugin (tests/cri_env.py) and
three runtime handlers:

* ``runc``: the reference, containerd's own runc shim;
* ``kata-stats-v1`` and ``kata-stats-v2``: our proxy shim (``containerd-shim-kata-stats-v2`` on containerd's
  PATH, as `shimstats install-shim` writes it; its file given as the handler's ``options.ConfigPath``) with
  containerd-shim-runc-v2 as the inner shim and v1 or v2 Metrics output. The guest agent runs on this host
  reading the runc container's own cgroup, standing in for the agent inside a Kata VM;
  ``stats_fallback = "error"``, so every figure CRI shows for these handlers came from our agent (runc's own
  answer is never passed through).

Every pod is driven through the generated CRI client (RunPodSandbox, CreateContainer, StartContainer, the
three stats calls, StopPodSandbox, RemovePodSandbox). The workload writes a file once (inactive file cache)
and reads part of it twice (active file cache), then sleeps. Each CRI figure (working set, usage, rss, page
faults, major page faults, available, cpu) must equal what the cgroup's own files say, read just before and
just after the calls; a reading counts only when the files did not move in between, so equality is exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shimstats.cri import CriMemory
from shimstats.cri_client import ContainerStatsRecord, CriError, MemoryFigures, PodSandboxStatsRecord
from shimstats.proxy import BINARY, RUNTIME_TYPE
from tests.containerd_env import (
    READ_MIB,
    READY_MARKER,
    SPLIT_CACHE_COMMAND,
    WRITE_MIB,
    _alive,
    memory_cgroup_root,
)
from tests.cri_env import (
    POD_MEMORY_LIMIT,
    CriContainer,
    CriContainerd,
    CriUnavailable,
    Pod,
    Runtime,
    cgroup_pids,
    cpuacct_dir,
)
from tests.integration.harness import CLI, REPO, AgentProcess, short_tmp, write_executable
from tests.integration.proxy_process import install_proxy

pytestmark = [pytest.mark.containerd, pytest.mark.cri]

CONTAINER_MEMORY_LIMIT = 256 * 1024 * 1024
MIB = 1024 * 1024
HANDLERS = ("runc", "kata-stats-v1", "kata-stats-v2")
STABLE_ATTEMPTS = 50
"""Readings tried until the cgroup's files are the same before and after the CRI calls."""
SETTLE = 15.0
"""Seconds a removed pod's processes, mounts and sockets get to go (shims exit asynchronously)."""


@dataclass(frozen=True)
class CriEnv:
    containerd: CriContainerd
    directory: Path

    def agent(self, pod: Pod, container: CriContainer) -> AgentProcess:
        """The guest agent of one pod, where the proxy's agent template points; it reads the container's
        host cgroup, standing in for the agent inside the pod's VM."""
        directory = self.directory / "a" / pod.id
        directory.mkdir(parents=True, exist_ok=True)
        return AgentProcess(directory, ["--container", f"{container.id}={container.cgroup}"])


@pytest.fixture(scope="module")
def cri_env(containerd_available: None) -> Iterator[CriEnv]:
    with short_tmp() as directory:
        bin_dir = directory / "bin"
        bin_dir.mkdir()

        launcher = install_proxy(directory / "launcher")  # `shimstats install-shim`, from this checkout

        def proxy(path: Path) -> Path:
            """A wrapper that touches <path>.ran, then runs the launcher: which binary containerd ran."""
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_executable(path, f'#!/bin/sh\ntouch {path}.ran\nexec {launcher} "$@"\n')

        # containerd 1.6.20 ignores runtime_path (containerd#8207): the proxy must be on its PATH.
        install_proxy(bin_dir)
        runtimes = {}
        for version in ("v1", "v2"):
            config = directory / f"kata-stats-{version}.toml"
            config.write_text(
                'inner_shim = "containerd-shim-runc-v2"\n'
                f'agent = "unix://{directory}/a/{{sandbox}}/agent.sock"\n'
                f'metrics_format = "{version}"\n'
                'stats_fallback = "error"\n'
            )
            runtimes[f"kata-stats-{version}"] = Runtime(RUNTIME_TYPE, config)
        # Any containerd 1.6/1.7 also takes an absolute path as runtime_type (resolveRuntimePath): a
        # second wrapper, off containerd's PATH, that leaves a mark when containerd runs it.
        off_path = proxy(directory / "opt" / "shimstats-proxy")
        runtimes["kata-stats-abs"] = Runtime(str(off_path), directory / "kata-stats-v2.toml")
        # runtime_path naming another off-PATH wrapper (same binary name as the one on the PATH).
        by_path = proxy(directory / "opt" / "by-runtime-path" / BINARY)
        runtimes["kata-stats-path"] = Runtime(RUNTIME_TYPE, directory / "kata-stats-v2.toml", by_path)
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
        with CriContainerd(runtimes, env=env) as containerd:
            yield CriEnv(containerd, directory)


@dataclass
class Running:
    pod: Pod
    container: CriContainer
    pids: list[int]


@pytest.fixture
def run_workload(cri_env: CriEnv) -> Iterator[Callable[[str, str], Running]]:
    """Start the page-cache workload in a new pod; pods a test leaves are removed afterwards."""
    started: list[Running] = []

    def start(name: str, handler: str) -> Running:
        containerd = cri_env.containerd
        pod = containerd.run_pod(name, handler)
        container = containerd.create_container(
            pod, "cache", list(SPLIT_CACHE_COMMAND), memory_limit=CONTAINER_MEMORY_LIMIT
        )
        running = Running(pod, container, [])
        started.append(running)
        containerd.start_container(container)
        _eventually(lambda: READY_MARKER in container.log(), f"{container.log_path} shows {READY_MARKER}")
        running.pids.extend(cgroup_pids(container.cgroup) + cgroup_pids(f"{pod.cgroup_parent}/{pod.id}"))
        return running

    yield start
    listed = {p.id for p in cri_env.containerd.client.list_pod_sandboxes()}
    for running in started:
        if running.pod.id in listed:
            cri_env.containerd.remove_pod(running.pod.id)
        cri_env.containerd.remove_pod_cgroup(running.pod)


def _eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


# -- the cgroup's own files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupFiles:
    """One reading of a v1 cgroup's files: what CRI's figures must come from."""

    usage: int  # memory.usage_in_bytes
    limit: int  # memory.limit_in_bytes
    stat: tuple[tuple[str, int], ...]  # memory.stat
    cpu_ns: int  # cpuacct.usage

    def __getitem__(self, key: str) -> int:
        return dict(self.stat)[key]

    def memory(self) -> MemoryFigures:
        """CRI MemoryUsage as containerd's rules make it from these files (timestamp aside)."""
        inactive = self["total_inactive_file"]
        working_set = self.usage - inactive if inactive < self.usage else 0
        assert self.limit < 1 << 62, "these tests set a limit, so available_bytes is limit - working set"
        return MemoryFigures(
            timestamp_ns=0,
            usage_bytes=self.usage,
            working_set_bytes=working_set,
            available_bytes=self.limit - working_set,
            rss_bytes=self["total_rss"],
            page_faults=self["total_pgfault"],
            major_page_faults=self["total_pgmajfault"],
        )


def _read(path: str) -> CgroupFiles:
    memory = memory_cgroup_root() / path.lstrip("/")
    lines = (memory / "memory.stat").read_text().splitlines()
    return CgroupFiles(
        usage=int((memory / "memory.usage_in_bytes").read_text()),
        limit=int((memory / "memory.limit_in_bytes").read_text()),
        stat=tuple((key, int(value)) for key, value in (line.split() for line in lines)),
        cpu_ns=int((cpuacct_dir(path) / "cpuacct.usage").read_text()),
    )


@dataclass(frozen=True)
class CriAnswers:
    container: CgroupFiles
    pod: CgroupFiles
    container_stats: ContainerStatsRecord
    listed: list[ContainerStatsRecord]
    pod_stats: list[PodSandboxStatsRecord]


def _ask_in_a_still_second(env: CriEnv, running: Running) -> CriAnswers:
    """The three CRI stats calls between two readings of the container's and the pod's files; retried
    until both readings agree, so every figure has one right value."""
    client = env.containerd.client
    container, pod = running.container, running.pod
    pod_cgroup = pod.cgroup_parent
    for _ in range(STABLE_ATTEMPTS):
        before = (_read(container.cgroup), _read(pod_cgroup))
        started = time.monotonic()
        single = client.container_stats(container.id)
        listed = client.list_container_stats(sandbox_id=pod.id)
        pods = client.list_pod_sandbox_stats(sandbox_id=pod.id)
        after = (_read(container.cgroup), _read(pod_cgroup))
        if before == after and time.monotonic() - started < 1.0:
            return CriAnswers(after[0], after[1], single, listed, pods)
        time.sleep(0.2)
    raise AssertionError(
        f"the cgroup files of {container.id} moved during every one of {STABLE_ATTEMPTS} tries"
    )


def _without_timestamp(figures: MemoryFigures | None) -> MemoryFigures | None:
    if figures is None:
        return None
    return MemoryFigures(
        0, *(getattr(figures, f) for f in MemoryFigures.__dataclass_fields__ if f != "timestamp_ns")
    )


def _assert_container_figures(record: ContainerStatsRecord, files: CgroupFiles, handler: str) -> None:
    assert _without_timestamp(record.memory) == files.memory()
    # v2 Metrics carry CPU time in µs and containerd multiplies by 1000: the last three digits go.
    cpu = files.cpu_ns // 1000 * 1000 if handler == "kata-stats-v2" else files.cpu_ns
    assert record.cpu_usage_core_nanos == cpu


def _assert_gone(env: CriEnv, running: Running) -> None:
    containerd = env.containerd
    containerd.remove_pod(running.pod.id)
    # The kubelet removes a pod's cgroup itself once the runtime has removed the pod: only an empty one goes.
    _eventually(lambda: not containerd.remove_pod_cgroup(running.pod), "the pod cgroup is empty", SETTLE)
    deadline = time.monotonic() + SETTLE
    while left := containerd.leftovers(running.pod, [running.container], running.pids):
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind by pod {running.pod.name}: {left}")
        time.sleep(0.05)


# -- the tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", HANDLERS)
def test_every_cri_figure_equals_the_cgroup_files(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running], handler: str
) -> None:
    running = run_workload(f"figures-{handler}", handler)
    pod, container = running.pod, running.container
    agent = cri_env.agent(pod, container) if handler != "runc" else None
    if agent is not None:
        agent.start()
    try:
        if agent is not None:
            # The proxy's agent client backs off (up to 2 s) after failed dials before the agent listened.
            _eventually(
                lambda: cri_env.containerd.client.container_stats(container.id).memory is not None,
                "figures from the agent",
            )
        answers = _ask_in_a_still_second(cri_env, running)
    finally:
        if agent is not None:
            agent.kill()

    # The workload did what it says: a file written once is inactive cache, the part read twice is active.
    files = answers.container
    assert files["total_inactive_file"] >= (WRITE_MIB - READ_MIB) * MIB * 0.8
    assert files["total_active_file"] >= READ_MIB * MIB * 0.8
    assert files.limit == CONTAINER_MEMORY_LIMIT

    _assert_container_figures(answers.container_stats, files, handler)
    assert answers.container_stats.id == container.id
    (listed,) = answers.listed
    assert listed.id == container.id
    _assert_container_figures(listed, files, handler)

    (pod_stats,) = answers.pod_stats
    assert (pod_stats.id, pod_stats.name) == (pod.id, pod.name)
    # Pod-level figures: containerd 1.6 reads the pod's host cgroup itself (cgroup v1 library), not a shim.
    assert answers.pod.limit == POD_MEMORY_LIMIT
    assert _without_timestamp(pod_stats.memory) == answers.pod.memory()
    assert pod_stats.cpu_usage_core_nanos == answers.pod.cpu_ns
    (in_pod,) = pod_stats.containers
    assert in_pod.id == container.id
    _assert_container_figures(in_pod, files, handler)

    # The working set really left the inactive cache out, and the agent's cgroup is the one CRI created.
    memory = answers.container_stats.memory
    assert memory is not None
    assert memory.working_set_bytes is not None
    assert memory.usage_bytes is not None
    assert memory.usage_bytes - memory.working_set_bytes >= (WRITE_MIB - READ_MIB) * MIB * 0.8
    _assert_gone(cri_env, running)


def test_agent_down_with_fallback_error_lists_the_container_without_figures(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running]
) -> None:
    """What the kubelet gets when our agent cannot be reached and stats_fallback = "error".

    containerd's Tasks.Metrics skips a task whose Stats failed, so CRI's ListContainerStats still lists the
    container (attributes, writable layer) with no cpu and no memory block, and ContainerStats fails. The
    kubelet's CRI stats provider (makeContainerStats) then records working set 0, stamped now.
    """
    running = run_workload("agent-down", "kata-stats-v1")
    client = cri_env.containerd.client
    container = running.container

    (listed,) = client.list_container_stats(sandbox_id=running.pod.id)
    assert listed.id == container.id
    assert listed.name == "cache"
    assert (listed.memory, listed.cpu_usage_core_nanos) == (None, None)

    with pytest.raises(CriError) as caught:
        client.container_stats(container.id)
    assert caught.value.code == grpc.StatusCode.UNKNOWN
    assert "unexpected metrics response: []" in str(caught.value)

    # Pod level still has figures (containerd reads the host pod cgroup); the container inside has none.
    (pod_stats,) = client.list_pod_sandbox_stats(sandbox_id=running.pod.id)
    assert pod_stats.memory is not None
    assert pod_stats.memory.working_set_bytes is not None
    assert [(c.id, c.memory) for c in pod_stats.containers] == [(container.id, None)]

    log = cri_env.containerd.log_path.read_text(errors="replace").splitlines()
    errors = [line for line in log if f"collecting metrics for {container.id}" in line]
    assert errors, "containerd logs why the task has no metrics"
    assert errors[-1].endswith(': unavailable"')
    assert "guest agent at unix://" in errors[-1]

    # Once the agent listens, the same calls carry its figures again.
    with cri_env.agent(running.pod, container):
        _eventually(lambda: client.container_stats(container.id).memory is not None, "figures again")
    _assert_gone(cri_env, running)


def test_a_cri_plugin_that_fails_to_load_is_a_clear_error(containerd_available: None) -> None:
    """containerd keeps running and answers UNIMPLEMENTED without CRI: start() says why the plugin failed."""
    instance = CriContainerd(default_runtime="absent")
    with pytest.raises(CriUnavailable, match=r"CRI plugin did not load.*default_runtime_name"):
        instance.start()
    instance.stop()  # strict: nothing may be left of the failed start


def test_an_absolute_runtime_type_runs_the_proxy_from_off_path(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running]
) -> None:
    """containerd 1.6.20 ignores runtime_path (containerd#8207) but runs an absolute runtime_type as is."""
    wrapper = Path(cri_env.containerd.runtimes["kata-stats-abs"].runtime_type)
    assert str(wrapper.parent) not in os.environ["PATH"].split(os.pathsep)
    running = run_workload("absolute", "kata-stats-abs")
    assert Path(f"{wrapper}.ran").exists()
    with cri_env.agent(running.pod, running.container):
        _eventually(
            lambda: cri_env.containerd.client.container_stats(running.container.id).memory is not None,
            "figures from the agent through the off-PATH proxy",
        )
    _assert_gone(cri_env, running)


def _containerd_version() -> tuple[int, ...]:
    """containerd's release: (1, 6, 20) from "containerd github.com/containerd/containerd 1.6.20~ds1 ..."."""
    words = subprocess.run(
        ["containerd", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    release = re.match(r"v?(\d+)\.(\d+)\.(\d+)", words[2])
    assert release is not None, words
    return tuple(int(part) for part in release.groups())


def test_runtime_path_is_honoured_only_from_1_6_21_and_1_7_1(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running]
) -> None:
    """docs/proxy-shim.md's version table: before the fix for containerd#8207, runtime_path is ignored and
    the binary is looked up by name on containerd's PATH (here: the PATH wrapper runs, not this one)."""
    wrapper = cri_env.containerd.runtimes["kata-stats-path"].runtime_path
    assert wrapper is not None
    running = run_workload("runtime-path", "kata-stats-path")
    version = _containerd_version()
    honoured = version >= (1, 7, 1) or (1, 6, 21) <= version < (1, 7, 0)
    assert Path(f"{wrapper}.ran").exists() == honoured, f"containerd {version}"
    _assert_gone(cri_env, running)


# -- shimstats compare --cri ------------------------------------------------------------------------------


def _memory_dir(container: CriContainer) -> str:
    return str(memory_cgroup_root() / container.cgroup.lstrip("/"))


def _compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "compare", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compare_shows_what_cri_reports_next_to_the_guest(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running]
) -> None:
    running = run_workload("compare", "runc")
    container = running.container
    args = ["--id", container.id, "--cgroup", _memory_dir(container), "--cri", cri_env.containerd.cri_address]

    done = _compare(*args, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (column,) = [c for c in report["columns"] if c["key"] == "cri"]
    assert (column["label"], column["live"], column["type_url"], column["error"]) == (
        "containerd CRI",
        True,
        "CRI stats",
        None,
    )
    assert column["differs"] == {}
    figures = column["figures"]
    assert set(figures) == {*CriMemory.__dataclass_fields__, "cpu_total_ns"}  # CRI's six and its CPU time
    # The kubelet's working set left the inactive cache out, like the guest's own figure.
    guest = report["guest"]["figures"]
    assert figures["usage_bytes"] - figures["working_set_bytes"] >= (WRITE_MIB - READ_MIB) * MIB * 0.8
    assert abs(figures["working_set_bytes"] - guest["working_set_bytes"]) <= 512 * 1024

    table = _compare(*args)
    assert table.returncode == 0, table.stderr
    header, kinds = table.stdout.splitlines()[1:3]
    assert header.rstrip().endswith("containerd CRI")
    assert kinds.rstrip().endswith("CRI stats")
    # Notes list what differs from the guest (the Kata shims' mistakes); nothing about CRI's column.
    assert not [line for line in table.stdout.splitlines() if line.startswith(("* containerd CRI", "! "))]

    # A CRI that cannot be reached is a failed source (exit 1) whose error names the socket.
    absent = f"unix://{cri_env.directory}/absent.sock"
    failed = _compare("--id", container.id, "--cgroup", _memory_dir(container), "--cri", absent)
    assert failed.returncode == 1
    assert (
        f"shimstats compare: containerd CRI: CRI ContainerStats({container.id}) at {absent}: UNAVAILABLE"
        in (failed.stderr)
    )
    assert "Traceback" not in failed.stderr
    _assert_gone(cri_env, running)


def test_compare_says_why_cri_has_no_figures_when_the_agent_is_down(
    cri_env: CriEnv, run_workload: Callable[[str, str], Running]
) -> None:
    running = run_workload("compare-down", "kata-stats-v1")
    container = running.container
    address = cri_env.containerd.cri_address
    done = _compare("--id", container.id, "--cgroup", _memory_dir(container), "--cri", address)
    assert done.returncode == 1
    assert "unexpected metrics response: []: containerd got no Stats answer from the container's shim" in (
        done.stderr
    )
    assert "shows this container's working set as 0" in done.stderr
    _assert_gone(cri_env, running)


def test_pods_of_a_crashed_run_come_back_not_ready_and_start_removes_them(containerd_available: None) -> None:
    """A node that lost containerd and every pod process at once (a crash, a reboot): containerd restarted on
    the same root lists the old pod as NotReady, and the harness removes it before anything else runs."""
    with CriContainerd() as instance:
        pod = instance.run_pod("crashed", "runc")
        container = instance.create_container(pod, "sleeper", ["sleep", "3600"])
        instance.start_container(container)
        victims = [instance.pid, *instance.shim_pids(), *cgroup_pids(container.cgroup)]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _eventually(lambda: not any(_alive(pid) for pid in victims), "the crashed run's processes are gone")
        instance.start()
        assert [(p.id, p.ready) for p in instance.removed_at_start] == [(pod.id, False)]
        assert instance.client.list_pod_sandboxes() == []
        assert instance.client.list_containers() == []
    # Leaving the block stopped it strictly: no process, cgroup, mount or directory is left.
