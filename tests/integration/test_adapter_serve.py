"""`shimstats serve` as a process: serves until a signal, answers like the in-process adapter, logs JSON
lines naming the container, removes its socket on the way out, and refuses bad flags with usage errors."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from shimstats import __version__
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.ttrpc import Client
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import (
    CLI,
    REPO,
    AgentProcess,
    Fixture,
    ServeProcess,
    fixtures,
    short_tmp,
)


@pytest.fixture(scope="module")
def fixture_agent() -> Iterator[tuple[Fixture, AgentProcess]]:
    fx = next(f for f in fixtures() if f.guest_version == 2 and not f.is_root)
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        yield fx, agent


def shimstats_stats(address: str, container_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "stats", "--shim", address, "--id", container_id, "--namespace", "k8s.io", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def connect(address: str) -> shim_pb2.ConnectResponse:
    async with await Client.connect(address) as client:
        raw = await client.call(TASK_SERVICE, "Connect", b"", timeout=5.0)
    return shim_pb2.ConnectResponse.FromString(raw)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_logs_and_cleans_up(fixture_agent: tuple[Fixture, AgentProcess], signum: int) -> None:
    fx, agent = fixture_agent
    stat = fx.keyed("memory", "memory.stat")
    usage = int(fx.file("memory", "memory.current"))
    with short_tmp() as directory:
        with ServeProcess(directory, agent.address, "--metrics-format", "v2") as serve:
            ok = shimstats_stats(serve.address, fx.request_id)
            missing = shimstats_stats(serve.address, "no-such-container")
            connected = asyncio.run(connect(serve.address))
            assert serve.stop(signum) == 0
        assert not serve.socket.exists()
        lines = serve.log_lines()

    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["type_url"] == "io.containerd.cgroups.v2.Metrics"
    assert answer["cri"]["usage_bytes"] == usage
    assert answer["cri"]["working_set_bytes"] == max(usage - stat["inactive_file"], 0)
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr

    assert connected.shim_pid == serve.process.pid
    assert connected.version == f"shimstats {__version__}"

    about = {line["container_id"]: line for line in lines if "container_id" in line}
    assert about[fx.request_id]["level"] == "debug"
    assert about["no-such-container"]["code"] == "NOT_FOUND"
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("serving containerd.task.v2.Task (metrics v2") for m in messages)
    assert "stopping" in messages


def test_serve_fails_cleanly_when_its_socket_is_taken(fixture_agent: tuple[Fixture, AgentProcess]) -> None:
    _, agent = fixture_agent
    # the agent's own socket is live: serve must refuse it, not take it over
    done = subprocess.run(
        [*CLI, "serve", "--listen", agent.address, "--agent", agent.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "already listening" in done.stderr
    assert agent.socket.exists()


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--listen", "relative.sock", "--agent", "vsock://3:1026"], "argument --listen"),
        (["--listen", "unix:///tmp/x.sock", "--agent", "vsock://3"], "argument --agent"),
        (["--listen", "unix:///tmp/x.sock", "--agent", "vsock://3:1026", "--timeout", "0"], "--timeout"),
        (["--listen", "unix:///tmp/x.sock", "--agent", "vsock://3:1026", "--metrics-format", "v3"], "v3"),
        (["--agent", "vsock://3:1026"], "--listen"),
    ],
)
def test_serve_refuses_bad_flags(flags: list[str], complaint: str) -> None:
    done = subprocess.run([*CLI, "serve", *flags], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert complaint in done.stderr
    assert "usage: shimstats serve" in done.stderr


def test_serve_help_teaches() -> None:
    done = subprocess.run([*CLI, "serve", "--help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for needle in (
        "--listen",
        "--agent",
        "--metrics-format",
        "examples:",
        "vsock://",
        "NOT_FOUND",
        "SIGTERM",
    ):
        assert needle in done.stdout
