"""A connection storm against each of our listeners: the kernel must queue it all, as for a Go ttrpc server.

Go's net.Listen asks the kernel for its largest accept queue (/proc/sys/net/core/somaxconn; src/net/
sock_linux.go maxListenerBacklog); asyncio's default backlog is 100, so a server that is briefly not
accepting (starved, paused, busy) used to refuse the 101st connect of a burst with EAGAIN. Here the server
process is stopped (SIGSTOP) while 300 connections are opened and dropped in a tight loop, so every one of
them has to wait in the accept queue; then it runs again, must get rid of the 300 dead connections, and
answer a normal call. The same storm against containerd's Go ttrpc server (the runc shim) is the reference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import health_pb2
from shimstats.fake_containerd import stats_metadata
from shimstats.ttrpc import CallContext, Client, Server, SyncClient
from shimstats.ttrpc.listen import listen_backlog
from shimstats.wire import HEALTH_SERVICE, TASK_SERVICE
from tests.containerd_env import Container
from tests.integration.harness import AgentProcess, ServeProcess, fixtures, short_tmp
from tests.integration.proxy_process import serve_proxy

STORM = 300


def _storm(path: Path, count: int = STORM) -> int:
    """Open and drop ``count`` connections as fast as possible; how many connects the kernel refused."""
    refused = 0
    for _ in range(count):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except BlockingIOError:  # EAGAIN: the accept queue is full
            refused += 1
        finally:
            probe.close()
    return refused


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The process does not run (so does not accept) inside the block."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _connect_call(address: str) -> shim_pb2.ConnectResponse:
    with SyncClient(address, timeout=10.0) as client:
        raw = client.call(TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id="c1").SerializeToString())
    return shim_pb2.ConnectResponse.FromString(raw)


def test_the_backlog_is_the_kernels_maximum(tmp_path: Path) -> None:
    assert listen_backlog() == int(Path("/proc/sys/net/core/somaxconn").read_text())
    (tmp_path / "somaxconn").write_text("65535\n")
    assert listen_backlog(tmp_path / "somaxconn") == 65535
    for unreadable in ("", "0\n", "lots\n"):  # Go falls back to SOMAXCONN for these too
        (tmp_path / "somaxconn").write_text(unreadable)
        assert listen_backlog(tmp_path / "somaxconn") == socket.SOMAXCONN
    assert listen_backlog(tmp_path / "missing") == socket.SOMAXCONN


async def test_a_storm_against_a_handed_over_socket() -> None:
    """A socket bound and listening with a small queue elsewhere, then served by Server.start: the storm
    runs with no await, so the server accepts nothing meanwhile and the kernel queue alone must hold it."""
    server = Server()
    server.register(HEALTH_SERVICE, {"Check": _serving})
    with short_tmp() as directory:
        path = directory / "handed.sock"
        handed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        handed.bind(str(path))
        handed.listen(1)
        await server.start(handed)
        try:
            refused = _storm(path)
            async with await Client.connect(f"unix://{path}", timeout=10.0) as client:
                raw = await client.call(HEALTH_SERVICE, "Check", b"", timeout=10.0)
        finally:
            await server.close(grace=1)
        assert path.exists()  # the file stays the caller's
    assert refused == 0
    assert health_pb2.HealthCheckResponse.FromString(raw).status == health_pb2.HealthCheckResponse.SERVING


async def _serving(payload: bytes, context: CallContext) -> bytes:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()


def test_a_storm_against_the_guest_agent() -> None:
    fx = next(f for f in fixtures() if not f.is_root)
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        assert agent.process is not None
        with _stopped(agent.process.pid):
            refused = _storm(agent.socket)
        with SyncClient(agent.address, timeout=10.0) as client:
            raw = client.call(HEALTH_SERVICE, "Check", health_pb2.CheckRequest().SerializeToString())
    assert refused == 0
    assert health_pb2.HealthCheckResponse.FromString(raw).status == health_pb2.HealthCheckResponse.SERVING


def test_a_storm_against_serve() -> None:
    with short_tmp() as directory, ServeProcess(directory, f"unix://{directory}/agent.sock") as serve:
        with _stopped(serve.process.pid):
            refused = _storm(serve.socket)
        answer = _connect_call(serve.address)
    assert refused == 0
    assert answer.shim_pid == serve.process.pid


def test_a_storm_against_the_proxy() -> None:
    with (
        short_tmp() as directory,
        ServeProcess(directory, f"unix://{directory}/agent.sock", name="inner") as inner,
    ):
        proxy, ours = serve_proxy(directory, inner)  # the proxy's serving process, as start leaves it
        try:
            with _stopped(proxy.pid):
                refused = _storm(ours)
            answer = _connect_call(f"unix://{ours}")  # forwarded to the inner shim
        finally:
            proxy.kill()
            proxy.wait()
    assert refused == 0
    assert answer.shim_pid == inner.process.pid


@pytest.mark.containerd
def test_the_same_storm_against_the_runc_shims_go_ttrpc_server(busybox_container: Container) -> None:
    address = f"unix://{busybox_container.shim_socket}"
    shim_pid = _connect_call(address).shim_pid
    with _stopped(shim_pid):
        refused = _storm(busybox_container.shim_socket)
    with SyncClient(address, timeout=10.0) as client:
        request = shim_pb2.StatsRequest(id=busybox_container.id).SerializeToString()
        raw = client.call(
            TASK_SERVICE, "Stats", request, metadata=stats_metadata(busybox_container.namespace)
        )
    assert refused == 0
    assert shim_pb2.StatsResponse.FromString(raw).stats.type_url
