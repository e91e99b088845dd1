"""The rig the hostile, fault and soak tests share: every listener of the project as a real process.

``Stack`` starts, in one short /tmp directory: a guest agent (``python -m guest_agent``) on a captured cgroup
v2 tree, the adapter (``shimstats serve``) in front of it, and the proxy shim's serving process
(``containerd-shim-kata-stats-v2 ... serve``) forwarding to an inner shim (another ``shimstats serve``, a
real Task server) and answering Stats from the same agent. Each listener is a ``Target`` that knows how to
make one well-formed call and what its answer must be, so a test can say "the others are still answered".
Helpers here speak raw bytes to a socket, which is what hostile peers do. The rig's own test is
tests/integration/test_hostile_rig.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shimstats import cri
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.fake_containerd import stats_metadata
from shimstats.ttrpc import Client, Frame
from shimstats.ttrpc.framing import FrameDecoder, MessageType, decode_response, encode_frame, encode_request
from shimstats.ttrpc.status import TtrpcError, error_from_status
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import (
    REPO,
    START_TIMEOUT,
    AgentProcess,
    Fixture,
    ServeProcess,
    fixtures,
    short_tmp,
)
from tests.integration.proxy_process import PROXY

FIXTURE: Fixture = next(fx for fx in fixtures() if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")
DEADLINE = 1.0
"""What "answered within the deadline" means in these tests: a good call's timeout, in seconds."""


@dataclass(frozen=True)
class Target:
    """One listening socket of the project, and the well-formed call that proves it still works."""

    name: str
    path: Path
    pid: int
    service: str
    method: str
    payload: bytes
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    async def good_call(self, client: Client, timeout: float = DEADLINE) -> bytes:
        """The well-formed call, checked: raises if the answer is not the right one."""
        raw = await client.call(
            self.service, self.method, self.payload, timeout=timeout, metadata=self.metadata
        )
        check_answer(self, raw)
        return raw

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def fds(self) -> int:
        return psutil.Process(self.pid).num_fds()


def check_answer(target: Target, raw: bytes) -> None:
    """The good call's answer carries the fixture's memory.current as usage (agent reply or v2 Metrics)."""
    current = int(FIXTURE.file("memory", "memory.current"))
    if target.method == "StatsContainer":
        usage = agent_pb2.StatsContainerResponse.FromString(raw).cgroup_stats.memory_stats.usage.usage
    else:
        metrics = cri.decode_metrics(shim_pb2.StatsResponse.FromString(raw).stats)
        assert isinstance(metrics, v2.Metrics), f"{target.name} was asked for v2 metrics"
        usage = metrics.memory.usage
    assert usage == current, f"{target.name}: usage {usage}, the fixture's memory.current is {current}"


def stats_request(container_id: str) -> bytes:
    return shim_pb2.StatsRequest(id=container_id).SerializeToString()


class ProxyProcess:
    """The proxy shim's serving process (as ``start`` launches it) on ``DIR/proxy.sock``."""

    def __init__(self, directory: Path, inner_address: str, agent_address: str) -> None:
        self.socket = directory / "proxy.sock"
        argv = [*PROXY, "-namespace", "k8s.io", "-id", "hostile"]
        argv += ["--listen", f"unix://{self.socket}", "--inner", inner_address, "--agent", agent_address]
        argv += ["--metrics-format", "v2", "serve"]
        self.process = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready != b"ready\n":
            self.kill()
            raise RuntimeError(f"the proxy did not start (said {ready!r})")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass
class Stack:
    """agent ← adapter, and agent + inner shim ← proxy: three listeners to attack."""

    directory: Path
    agent: AgentProcess
    adapter: ServeProcess
    inner: ServeProcess
    proxy: ProxyProcess

    def targets(self) -> dict[str, Target]:
        stats = stats_request(FIXTURE.request_id)
        meta = dict(stats_metadata("k8s.io"))
        assert self.agent.process is not None
        agent_request = agent_pb2.StatsContainerRequest(container_id=FIXTURE.request_id).SerializeToString()
        return {
            "agent": Target(
                "agent", self.agent.socket, self.agent.process.pid, "grpc.AgentService", "StatsContainer",
                agent_request,
            ),
            "adapter": Target(
                "adapter", self.adapter.socket, self.adapter.process.pid, TASK_SERVICE, "Stats", stats, meta
            ),
            "proxy": Target(
                "proxy", self.proxy.socket, self.proxy.process.pid, TASK_SERVICE, "Stats", stats, meta
            ),
        }  # fmt: skip


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    """Start every listener (bounded by START_TIMEOUT each); stop them all, whatever happens."""
    with (
        short_tmp() as directory,
        AgentProcess(directory, FIXTURE.agent_args()) as agent,
        ServeProcess(directory, agent.address, "--metrics-format", "v2") as adapter,
        ServeProcess(directory, agent.address, name="inner") as inner,
    ):
        proxy = ProxyProcess(directory, inner.address, agent.address)
        try:
            yield Stack(directory, agent, adapter, inner, proxy)
        finally:
            proxy.kill()


# -- raw peers -----------------------------------------------------------------------------------------------


def raw_socket(path: Path, timeout: float = START_TIMEOUT) -> socket.socket:
    """A unix socket connected to ``path``, retrying while the listen backlog is full (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:  # EAGAIN: the backlog is full; the server has not accepted yet
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        except BaseException:
            sock.close()
            raise


def header(length: int, stream_id: int, mtype: int = MessageType.REQUEST, flags: int = 0) -> bytes:
    """A header announcing any length (encode_frame refuses more than 4 MiB; a hostile peer does not)."""
    return struct.pack(">IIBB", length, stream_id, mtype, flags)


def request_frame(stream_id: int, target: Target, mtype: int = MessageType.REQUEST) -> bytes:
    """A well-formed call of ``target`` as one frame with any stream id and message type."""
    body = encode_request(
        target.service, target.method, target.payload, timeout_nano=int(DEADLINE * 1e9),
        metadata=[],
    )  # fmt: skip
    return encode_frame(stream_id, mtype, 0, body)


def read_answers(
    sock: socket.socket, wanted: set[int], timeout: float = DEADLINE * 3
) -> dict[int, TtrpcError | bytes]:
    """Read Response frames until every stream id in ``wanted`` is answered: id → error or payload."""
    decoder = FrameDecoder()
    answers: dict[int, TtrpcError | bytes] = {}
    deadline = time.monotonic() + timeout
    while not wanted <= answers.keys():
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        assert data, f"connection closed with {sorted(wanted - answers.keys())} unanswered"
        for event in decoder.feed(data):
            if isinstance(event, Frame) and event.mtype == MessageType.RESPONSE:
                response = decode_response(event.payload)
                error = error_from_status(response.status)
                answers[event.stream_id] = error if error is not None else bytes(response.payload)
    return answers
