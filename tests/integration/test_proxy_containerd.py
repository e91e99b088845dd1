"""The proxy shim under Debian's real containerd 1.6: ``ctr run --runtime io.containerd.kata-stats.v2``.

containerd resolves the runtime to ``containerd-shim-kata-stats-v2`` on its PATH (here the launcher
`shimstats install-shim` writes, running this checkout), and the proxy's config comes from SHIMSTATS_CONFIG in
containerd's environment or from ``--runtime-config-path`` (the runtime options). The inner shim is
containerd-shim-runc-v2; the guest agent runs on this host reading the runc container's own cgroup (v1
memory hierarchy, ``/<namespace>/<id>``), standing in for the agent inside a VM.

What is proven, for each container: the task API works through the proxy (ctr task ls / exec / metrics /
kill / delete), the metrics are ours (the format we configured, while runc on this v1 host always sends v1),
their working set equals the cgroup's usage − total_inactive_file read around the call, and after
``ctr task delete`` and ``ctr container delete`` no process, socket, cgroup or bundle is left.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shimstats.proxy import CONFIG_ENV, RUNTIME_TYPE
from shimstats.proxy.bundle import STATE_FILE
from tests.containerd_env import (
    READ_MIB,
    READY_MARKER,
    SPLIT_CACHE_COMMAND,
    WRITE_MIB,
    Container,
    Containerd,
    CtrError,
    _alive,
    _cmdline,
)
from tests.integration.conftest import unique_container_id
from tests.integration.harness import AgentProcess, short_tmp, write_executable
from tests.integration.proxy_process import install_proxy, is_proxy_server
from tests.kata_standins import KataShimStandIn, muxer_in_thread

pytestmark = pytest.mark.containerd

TOLERANCE = 512 * 1024
"""How far usage may move between our reads around ctr's (per-cpu charge batches, kernel allocations)."""
WORKLOAD = SPLIT_CACHE_COMMAND
SETTLE = 10.0
"""Seconds processes and sockets get to go after ctr returns (shims exit asynchronously)."""


@dataclass(frozen=True)
class ProxyEnv:
    containerd: Containerd
    directory: Path
    v2_config: Path
    """In SHIMSTATS_CONFIG: inner = containerd-shim-runc-v2, v2 metrics, fallback inner."""
    v1_config: Path
    """For --runtime-config-path: inner = the recording wrapper, v1 metrics, fallback error."""
    recordings: Path

    def agent(self, container: Container) -> AgentProcess:
        """The guest agent for one container, where the configs' agent template points."""
        directory = self.directory / "a" / container.id
        directory.mkdir(parents=True)
        return AgentProcess(
            directory, ["--container", f"{container.id}=/{container.namespace}/{container.id}"]
        )


@pytest.fixture(scope="module")
def proxy_env(containerd_available: None) -> Iterator[ProxyEnv]:
    with short_tmp() as directory:
        bin_dir, recordings = directory / "bin", directory / "rec"
        bin_dir.mkdir()
        recordings.mkdir()
        install_proxy(bin_dir)
        recorder = write_executable(
            bin_dir / "recording-runc-shim",
            "#!/bin/sh\n# keeps what start got on stdin, then is containerd-shim-runc-v2 with it\n"
            f'f={recordings}/stdin.$$\ncat > "$f"\nexec containerd-shim-runc-v2 "$@" < "$f"\n',
        )
        agent = f"unix://{directory}/a/{{id}}/agent.sock"
        v2 = directory / "v2.toml"
        v2.write_text(f'inner_shim = "containerd-shim-runc-v2"\nagent = "{agent}"\nmetrics_format = "v2"\n')
        v1 = directory / "v1.toml"
        v1.write_text(
            f'inner_shim = "{recorder}"\nagent = "{agent}"\nmetrics_format = "v1"\nstats_fallback = "error"\n'
        )
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}", CONFIG_ENV: str(v2)}
        with Containerd(env=env) as containerd:
            yield ProxyEnv(containerd, directory, v2, v1, recordings)


@pytest.fixture
def run(proxy_env: ProxyEnv, request: pytest.FixtureRequest) -> Iterator[Callable[..., Container]]:
    """Start page-cache containers through the proxy; whatever a test leaves is deleted afterwards."""
    started: list[Container] = []

    def start(*ctr_flags: str) -> Container:
        container = proxy_env.containerd.run_busybox(
            unique_container_id(request), list(WORKLOAD), ctr_flags=["--runtime", RUNTIME_TYPE, *ctr_flags]
        )
        started.append(container)
        container.wait_for_output(READY_MARKER)
        return container

    yield start
    for container in started:
        listed = proxy_env.containerd.ctr(
            "containers", "list", "-q", namespace=container.namespace
        ).stdout.split()
        if container.id in listed:
            proxy_env.containerd.kill(container)


# -- reading the host ------------------------------------------------------------------------------


def _memory_stat(container: Container) -> dict[str, int]:
    lines = (container.memory_cgroup / "memory.stat").read_text().splitlines()
    return {key: int(value) for key, value in (line.split() for line in lines)}


def _cgroup_working_set(container: Container) -> int:
    """The kernel's working set: memory.usage_in_bytes − total_inactive_file (v1, as CRI computes it)."""
    usage = int((container.memory_cgroup / "memory.usage_in_bytes").read_text())
    return max(0, usage - _memory_stat(container)["total_inactive_file"])


def _metrics_around(env: ProxyEnv, container: Container) -> tuple[dict[str, Any], int, int]:
    before = _cgroup_working_set(container)
    metrics = env.containerd.metrics_json(container)
    after = _cgroup_working_set(container)
    return metrics, before, after


def _reported_working_set(metrics: dict[str, Any], version: str) -> int:
    """CRI's working set from ctr's JSON (Go omitempty: an absent key is 0)."""
    memory = metrics["memory"]
    if version == "v2":
        usage, inactive = int(memory["usage"]), int(memory.get("inactive_file", 0))
    else:
        usage, inactive = int(memory["usage"]["usage"]), int(memory.get("total_inactive_file", 0))
    return max(0, usage - inactive)


def _bundle(env: ProxyEnv, container: Container) -> Path:
    return (
        env.containerd.base_dir
        / "state"
        / "io.containerd.runtime.v2.task"
        / container.namespace
        / container.id
    )


def _host_path(env: ProxyEnv, address: str) -> Path:
    """A shim address as seen from the host: containerd's /run is its run_dir here."""
    path = Path(address.removeprefix("unix://"))
    return env.containerd.run_dir / path.relative_to("/run")


def _task_row(env: ProxyEnv, container: Container) -> list[str] | None:
    for line in env.containerd.ctr("tasks", "list", namespace=container.namespace).stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container.id:
            return fields
    return None


def _eventually(check: Callable[[], bool], what: str, timeout: float = SETTLE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _left(env: ProxyEnv, container: Container) -> list[str]:
    """Everything this container could have left: shims (ours too), sockets, its cgroup, its bundle."""
    left = [f"shim pid {pid}: {' '.join(_cmdline(pid))}" for pid in env.containerd.shim_pids()]
    sockets = env.containerd.run_dir / "containerd" / "s"
    left += [f"socket {entry}" for entry in (sockets.iterdir() if sockets.exists() else [])]
    left += [f"cgroup {container.memory_cgroup}"] if container.memory_cgroup.exists() else []
    left += [f"bundle {_bundle(env, container)}"] if _bundle(env, container).exists() else []
    return left


def _assert_nothing_left(env: ProxyEnv, container: Container) -> None:
    deadline = time.monotonic() + SETTLE
    while left := _left(env, container):
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: {left}")
        time.sleep(0.05)


def _proxy_log(env: ProxyEnv, container: Container) -> list[str]:
    """Our lines in containerd's log (containerd copies each shim's log fifo to its stderr)."""
    lines = env.containerd.log_path.read_text(errors="replace").splitlines()
    return [line for line in lines if f"runtime={RUNTIME_TYPE}" in line and f"id={container.id}" in line]


# -- the tests -------------------------------------------------------------------------------------


def test_the_task_api_through_the_proxy_with_our_v2_metrics(
    proxy_env: ProxyEnv, run: Callable[..., Container]
) -> None:
    env, ctr = proxy_env, proxy_env.containerd.ctr
    container = run()
    ns = container.namespace

    # containerd talks to us: the bundle's address names our socket, not runc's (which still serves us).
    bundle = _bundle(env, container)
    ours = (bundle / "address").read_text()
    state = json.loads((bundle / STATE_FILE).read_text())
    assert ours == state["address"] != state["inner_address"]
    assert _host_path(env, state["inner_address"]) == container.shim_socket  # runc's own socket
    assert stat.S_ISSOCK(_host_path(env, ours).stat().st_mode)

    row = _task_row(env, container)
    assert row == [container.id, str(container.pid), "RUNNING"]

    fifo_dir = env.directory / "fifo"  # ctr's exec fifos, on a path the shims see (not under /run)
    fifo_dir.mkdir(exist_ok=True)
    exec_flags = ("--exec-id", "e1", "--fifo-dir", str(fifo_dir))
    out = ctr("tasks", "exec", *exec_flags, container.id, "cat", "/proc/self/cgroup", namespace=ns)
    assert any(line.endswith(f":memory:/{ns}/{container.id}") for line in out.stdout.splitlines()), out.stdout

    with env.agent(container):
        # ctr prints v2 rows only for io.containerd.cgroups.v2.Metrics; runc on this v1 host sends v1.
        table = env.containerd.metrics_table(container)
        assert "memory.usage" in table
        assert "memory.usage_in_bytes" not in table
        metrics, before, after = _metrics_around(env, container)
    reported = _reported_working_set(metrics, "v2")
    assert min(before, after) - TOLERANCE <= reported <= max(before, after) + TOLERANCE
    # The written-once pages are inactive file cache: the answer subtracted them from usage.
    assert metrics["memory"]["inactive_file"] >= (WRITE_MIB - READ_MIB) * 0.8 * 2**20

    ctr("tasks", "kill", "--signal", "SIGKILL", container.id, namespace=ns)
    _eventually(lambda: (_task_row(env, container) or [""])[-1] == "STOPPED", "the task stops after kill")
    ctr("tasks", "delete", container.id, namespace=ns)
    assert _task_row(env, container) is None
    ctr("containers", "delete", container.id, namespace=ns)
    _assert_nothing_left(env, container)

    # containerd copies the shim's log fifo on its own goroutine: the last line may land after the delete.
    _eventually(
        lambda: any("inner shim's connection closed" in line for line in _proxy_log(env, container)),
        "the proxy logs that it stopped because the inner shim's connection closed",
    )
    assert any('msg="serving containerd.task.v2.Task' in line for line in _proxy_log(env, container))


def test_config_from_the_runtime_options_v1_metrics_and_fallback_error(
    proxy_env: ProxyEnv, run: Callable[..., Container]
) -> None:
    env = proxy_env
    container = run("--runtime-config-path", str(env.v1_config))
    state = json.loads((_bundle(env, container) / STATE_FILE).read_text())
    assert state["inner_shim"] == str(env.directory / "bin" / "recording-runc-shim")  # v1.toml's inner
    # containerd sent runtimeoptions.v1.Options{config_path = v1.toml} (on start's stdin and in Create);
    # runc refuses that type ("type with url runtimeoptions.v1.Options: not found"), so the task running
    # at all shows the proxy kept our options from it both times. The recorder saw an empty stdin.
    assert [path.read_bytes() for path in env.recordings.iterdir()] == [b""]

    with env.agent(container):
        table = env.containerd.metrics_table(container)
        assert "memory.usage_in_bytes" in table
        assert "memory.usage" not in table
        metrics, before, after = _metrics_around(env, container)
    reported = _reported_working_set(metrics, "v1")
    assert min(before, after) - TOLERANCE <= reported <= max(before, after) + TOLERANCE
    assert metrics["memory"]["total_inactive_file"] >= (WRITE_MIB - READ_MIB) * 0.8 * 2**20

    # The agent is gone now: stats_fallback = "error" answers UNAVAILABLE instead of runc's figures.
    # containerd's Metrics skips a task whose Stats failed and logs why (services/tasks getTasksMetrics).
    with pytest.raises(CtrError, match="no metrics received"):
        env.containerd.metrics_json(container)
    lines = env.containerd.log_path.read_text(errors="replace").splitlines()
    [error] = [line for line in lines if f"collecting metrics for {container.id}" in line]
    assert error.endswith(': unavailable"')  # containerd's errdefs name for our UNAVAILABLE status
    assert "guest agent at unix://" in error
    env.containerd.kill(container)
    _assert_nothing_left(env, container)


def test_unreachable_agent_passes_runcs_stats_through_and_warns_once(
    proxy_env: ProxyEnv, run: Callable[..., Container]
) -> None:
    env = proxy_env
    container = run()
    for _ in range(3):  # no agent yet: runc's own v1 answer, although our config says v2
        table = env.containerd.metrics_table(container)
        assert "memory.usage_in_bytes" in table
    warnings = [line for line in _proxy_log(env, container) if "level=warning" in line]
    assert len(warnings) == 1, warnings
    assert "guest agent unreachable" in warnings[0]
    with env.agent(container):
        _eventually(
            lambda: "memory.usage" in env.containerd.metrics_table(container),
            "Stats from the agent once it listens (the agent client backs off up to 2 s between dials)",
        )
    assert any("guest agent answers Stats again" in line for line in _proxy_log(env, container))
    env.containerd.kill(container)
    _assert_nothing_left(env, container)


def _proxy_pid(env: ProxyEnv, container: Container) -> int:
    [pid] = [
        pid
        for pid in env.containerd.shim_pids()
        if is_proxy_server(_cmdline(pid)) and container.id in _cmdline(pid)
    ]
    return pid


def test_a_killed_proxy_is_cleaned_up_by_containerd_through_our_delete(
    proxy_env: ProxyEnv, run: Callable[..., Container]
) -> None:
    """containerd sees the shim connection drop, runs our ``delete``; the runc shim and task go too."""
    env = proxy_env
    container = run()
    os.kill(_proxy_pid(env, container), signal.SIGKILL)
    _eventually(lambda: _task_row(env, container) is None, "containerd drops the task of a dead shim")
    env.containerd.ctr("containers", "delete", container.id, namespace=container.namespace)
    _assert_nothing_left(env, container)
    assert not _alive(container.pid)  # runc's delete killed the container's init


@pytest.mark.parametrize(("agent_port", "guest_port"), [("2048", 2048), ('"kata-agent"', 1024)])
def test_agent_kata_finds_the_agent_through_the_kata_shim(
    proxy_env: ProxyEnv, run: Callable[..., Container], agent_port: str, guest_port: int
) -> None:
    """``agent = "kata"``: the serving process asks the sandbox's Kata shim (a stand-in serving /agent-url
    on ``<kata_root>/<sandbox>/shim-monitor.sock``; under ctr the sandbox is the container id) and dials
    the hybrid vsock it names, where a muxer stands in for Cloud Hypervisor: on port 2048, or with
    ``agent_port = "kata-agent"`` on the port Kata reports (the stock kata-agent's; our agent stands in)."""
    env = proxy_env
    kata_root = env.directory / "kata-run"
    config = env.directory / f"kata-{guest_port}.toml"
    config.write_text(
        f'inner_shim = "containerd-shim-runc-v2"\nagent = "kata"\nagent_port = {agent_port}\n'
        f'kata_roots = ["{env.directory}/no-such-root", "{kata_root}"]\nmetrics_format = "v2"\n'
    )
    container = run("--runtime-config-path", str(config))
    mux_path = env.directory / f"clh-{container.id[-8:]}.sock"
    with (
        env.agent(container) as agent,
        muxer_in_thread(mux_path, {guest_port: agent.socket}) as mux,
        KataShimStandIn(kata_root, container.id, f"hvsock://{mux_path}:1024") as shim,
    ):
        table = env.containerd.metrics_table(container)
        assert "memory.usage" in table  # v2 rows: our answer (runc on this v1 host sends v1)
        metrics, before, after = _metrics_around(env, container)
    assert shim.requests == [("GET", "/agent-url")]
    assert mux.requests == [f"CONNECT {guest_port}\n".encode()]
    reported = _reported_working_set(metrics, "v2")
    assert min(before, after) - TOLERANCE <= reported <= max(before, after) + TOLERANCE
    env.containerd.kill(container)
    _assert_nothing_left(env, container)
