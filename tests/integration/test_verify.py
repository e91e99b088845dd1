"""`shimstats verify` as a process against real shims: the runc shim passes, a Kata-like shim fails.

The wrong shim is served by the test with our ttrpc server: it asks a real guest agent (serving a real
cgroup v2 capture) and answers Stats the way the Kata Go shim does on a cgroup v1 host.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.agent_client import AgentClient
from shimstats.emulate import kata_go
from shimstats.ttrpc import CallContext, Server
from shimstats.wire import TASK_SERVICE
from tests.containerd_env import Container
from tests.integration.harness import CLI, REPO, AgentProcess, ServeProcess, fixtures, short_tmp

V2_INACTIVE = next(fx for fx in fixtures() if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")
V2_INACTIVE_DIR = V2_INACTIVE.path / "cgroup" / str(V2_INACTIVE.meta["container_path"]).lstrip("/")


def verify_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "verify", *args], capture_output=True, text=True, timeout=30, cwd=REPO, check=False
    )


async def verify_cli_async(*args: str) -> tuple[int, str, str]:
    """The CLI as a subprocess while this event loop keeps serving the test's shim."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, "verify", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.containerd
def test_verify_passes_against_the_runc_shim(busybox_container: Container) -> None:
    args = ["--shim", f"unix://{busybox_container.shim_socket}", "--id", busybox_container.id]
    args += ["--namespace", busybox_container.namespace, "--cgroup", str(busybox_container.memory_cgroup)]
    table = verify_cli(*args)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "verdict: every figure agrees" in table.stdout
    assert "FAIL" not in table.stdout

    proc = verify_cli(*args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    assert out["type_url"] == cri.V1_TYPE_URL
    assert out["ground_truth"]["cgroup_version"] == 1
    checks = {c["figure"]: c for c in out["checks"]}
    assert {"usage_bytes", "working_set_bytes", "available_bytes", "rss_bytes", "page_faults"} <= set(checks)
    # The expected working set is the cgroup's own usage - total_inactive_file (read after the call).
    after = out["ground_truth"]["after"]
    stat = out["ground_truth"]["memory_stat"]
    assert after["working_set_bytes"] == max(after["usage_bytes"] - stat["total_inactive_file"], 0)
    assert after["rss_bytes"] == stat["total_rss"]
    assert (
        out["kubelet"]["workingSetBytes"]
        == out["cri"]["working_set_bytes"]
        == checks["working_set_bytes"]["reported"]
    )


@asynccontextmanager
async def kata_go_like_shim(agent_address: str, directory: Path) -> AsyncIterator[str]:
    """Task/Stats answered like the Kata Go shim on a cgroup v1 host (v1 Metrics whatever the guest)."""
    agent = AgentClient(agent_address)

    async def stats(payload: bytes, ctx: CallContext) -> bytes:
        request = shim_pb2.StatsRequest.FromString(payload)
        response = await agent.stats_container(request.id)
        any_metrics = cri.encode_metrics(kata_go.metrics(response, "v1"))
        return shim_pb2.StatsResponse(stats=any_metrics).SerializeToString()

    server = Server()
    server.register(TASK_SERVICE, {"Stats": stats})
    address = f"unix://{directory}/kata-go.sock"
    await server.start(address)
    try:
        yield address
    finally:
        await server.close(grace=1.0)
        await agent.close()


async def test_verify_fails_against_a_kata_go_like_shim_naming_inactive_file() -> None:
    with short_tmp() as tmp, AgentProcess(tmp, V2_INACTIVE.agent_args()) as agent:
        async with kata_go_like_shim(agent.address, tmp) as shim:
            base = ["--shim", shim, "--id", V2_INACTIVE.request_id, "--agent", agent.address]
            code, out, err = await verify_cli_async(*base)
            assert code == 1, out + err
            assert "FAIL working set: inactive_file not subtracted: reported working set equals usage" in out
            code, out, err = await verify_cli_async(*base, "--json")
    assert code == 1, err
    data = json.loads(out)
    failed = {c["figure"]: c for c in data["checks"] if not c["ok"]}
    usage = data["ground_truth"]["after"]["usage_bytes"]
    inactive = data["ground_truth"]["memory_stat"]["inactive_file"]
    assert failed["working_set_bytes"]["reported"] == usage
    assert failed["working_set_bytes"]["difference"] == inactive  # exactly the cache it failed to subtract
    assert "inactive_file" in failed["working_set_bytes"]["cause"]


@contextmanager
def our_adapter_on_a_v1_host() -> Iterator[tuple[str, str]]:
    """A guest agent serving the v2 capture and our adapter answering v1 Metrics: (agent, adapter)."""
    with ExitStack() as stack:
        tmp = stack.enter_context(short_tmp())
        agent = stack.enter_context(AgentProcess(tmp, V2_INACTIVE.agent_args()))
        adapter = stack.enter_context(ServeProcess(tmp, agent.address, "--metrics-format", "v1"))
        yield agent.address, adapter.address


def test_verify_passes_against_our_adapter_for_the_same_v2_guest_on_a_v1_host() -> None:
    with our_adapter_on_a_v1_host() as (agent, adapter):
        by_agent = verify_cli("--shim", adapter, "--id", V2_INACTIVE.request_id, "--agent", agent)
        by_files = verify_cli(
            "--shim", adapter, "--id", V2_INACTIVE.request_id, "--cgroup", str(V2_INACTIVE_DIR)
        )
    assert by_agent.returncode == 0, by_agent.stdout + by_agent.stderr
    assert by_files.returncode == 0, by_files.stdout + by_files.stderr
    assert "cgroup v2" in by_files.stdout


@pytest.mark.slow
def test_verify_exit_2_when_it_cannot_verify(tmp_path: Path) -> None:
    missing = tmp_path / "no.sock"
    unreachable = verify_cli("--shim", f"unix://{missing}", "--id", "x", "--cgroup", str(V2_INACTIVE_DIR))
    assert unreachable.returncode == 2
    assert str(missing) in unreachable.stderr
    no_cgroup = verify_cli("--shim", f"unix://{missing}", "--id", "x", "--cgroup", str(tmp_path / "nothing"))
    assert no_cgroup.returncode == 2
    assert "does not exist" in no_cgroup.stderr
    with our_adapter_on_a_v1_host() as (agent, adapter):
        unknown = verify_cli("--shim", adapter, "--id", "no-such-id", "--agent", agent)
    assert unknown.returncode == 2
    assert "no-such-id" in unknown.stderr
    assert "NOT_FOUND" in unknown.stderr


def test_verify_help_teaches() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shimstats.cli", "verify", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0
    assert "exit codes" in proc.stdout
    assert "--cgroup" in proc.stdout
