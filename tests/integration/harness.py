"""What the integration tests run on: a real guest agent subprocess, an in-process adapter, a silent agent.

tests/integration/test_adapter_harness.py shows these work: the agent answers once its socket accepts,
SIGTERM removes its socket, a killed agent can be started again on the same path. Every socket lives in a
short /tmp directory (unix socket paths are limited to 107 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from shimstats.adapter import StatsHandler, TaskService
from shimstats.agent_client import AgentClient, Backoff
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.translate import OutputFormat
from shimstats.ttrpc import Client, Code, Frame, Server
from shimstats.ttrpc.framing import (
    FrameDecoder,
    MessageType,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
)
from shimstats.ttrpc.probe import listening
from shimstats.ttrpc.server import Handler
from shimstats.ttrpc.status import TtrpcError, error_from_status

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "cgroupfs"
START_TIMEOUT = 10.0
"""Seconds an agent or adapter process gets to accept connections (~0.3 s here; CI machines can be slow)."""
CLI = [sys.executable, "-m", "shimstats.cli"]


def skip_unless(reason: str | None) -> None:
    """Skip the test when this machine lacks what it needs (``reason`` says what); in CI (CI=true) every
    test must run, so there it fails instead."""
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"this test must run in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def end_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; always reaped."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    """A private directory under /tmp, short enough for socket paths; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ss-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_executable(path: Path, text: str) -> Path:
    """Write a script and make it executable for everyone (containerd runs shims as root anyway)."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def accepts(path: Path) -> bool:
    return listening(str(path))


class AgentProcess:
    """``python -m guest_agent`` on ``DIR/agent.sock`` with the given extra flags; start, kill, restart.
    ``python`` is the interpreter (default: the one running the tests)."""

    def __init__(self, directory: Path, args: Sequence[str], *, python: str = sys.executable) -> None:
        self.python = python
        self.socket = directory / "agent.sock"
        self.address = f"unix://{self.socket}"
        self.log_path = directory / "agent.log"
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the agent and return once its socket accepts connections."""
        assert self.process is None, "agent already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "guest_agent", "--listen", self.address, *self.args],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"guest agent did not start; its log:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the agent dies without closing anything (its socket file stays behind)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None, "agent not running"
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        finally:
            self.process = None

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


class ServeProcess:
    """``shimstats --log-level debug serve ... --log-format json`` on ``DIR/NAME.sock``, its log in
    ``DIR/NAME.log``; returns from the constructor once the socket accepts."""

    def __init__(self, directory: Path, agent_address: str, *extra: str, name: str = "adapter") -> None:
        self.socket = directory / f"{name}.sock"
        self.address = f"unix://{self.socket}"
        self.log_path = directory / f"{name}.log"
        argv = [*CLI, "--log-level", "debug", "serve", "--listen", self.address, "--agent", agent_address]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*argv, "--log-format", "json", *extra], cwd=REPO, stdin=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"shimstats serve did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait; returns the exit status."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=10)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


@dataclass(frozen=True)
class Fixture:
    """One captured cgroupfs tree (tests/fixtures/cgroupfs/NAME) and what it says about itself."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def guest_version(self) -> int:
        return 2 if self.meta["mode"] == "v2" else 1

    @property
    def is_root(self) -> bool:
        return bool(self.meta["container_path"] == "/")

    @property
    def request_id(self) -> str:
        """The id to ask for: the fixture's container id, or for a root fixture a sandbox id."""
        return "sandbox-root" if self.is_root else str(self.meta["container_id"])

    def agent_args(self) -> list[str]:
        args = ["--cgroupfs-root", str(self.path / "cgroup"), "--meminfo", str(self.path / "meminfo")]
        if self.is_root:
            return [*args, "--sandbox", self.request_id]
        return [*args, "--container", f"{self.request_id}={self.meta['container_path']}"]

    @property
    def memory_dir(self) -> Path:
        """The container's memory cgroup directory in the capture (v1: under memory/)."""
        base = self.path / "cgroup" / ("memory" if self.guest_version == 1 else "")
        return base / str(self.meta["container_path"]).lstrip("/")

    def file(self, controller: str, name: str) -> str:
        """The text of a stat file of the fixture's cgroup (controller ignored on v2)."""
        base = self.path / "cgroup"
        if self.guest_version == 1:
            base = base / controller
        relative = str(self.meta["container_path"]).lstrip("/")
        return (base / relative / name).read_text()

    def keyed(self, controller: str, name: str) -> dict[str, int]:
        """A flat-keyed stat file (``key value`` lines) as a dict."""
        pairs = (line.split() for line in self.file(controller, name).splitlines() if line.strip())
        return {key: int(value) for key, value in pairs}


def fixtures() -> list[Fixture]:
    """Every captured fixture tree, by name."""
    return [
        Fixture(meta_file.parent, json.loads(meta_file.read_text()))
        for meta_file in sorted(FIXTURES.glob("*/meta.json"))
    ]


@contextlib.asynccontextmanager
async def running_adapter(
    agent_address: str,
    output: OutputFormat,
    directory: Path,
    *,
    backoff: Backoff | None = None,
) -> AsyncIterator[tuple[str, AgentClient]]:
    """The adapter in this event loop on ``DIR/adapter.sock``: (its address, its agent client)."""
    agent = AgentClient(agent_address, backoff=backoff)
    server = Server()
    TaskService(StatsHandler(agent, output)).register(server)
    address = f"unix://{directory}/adapter.sock"
    await server.start(address)
    try:
        yield address, agent
    finally:
        await server.close(grace=1.0)
        await agent.close()


@contextlib.asynccontextmanager
async def ttrpc_server(address: str, services: Mapping[str, Mapping[str, Handler]]) -> AsyncIterator[str]:
    """Our ttrpc server in this event loop at ``address`` with the given handlers; yields the address."""
    server = Server()
    for service, methods in services.items():
        server.register(service, methods)
    await server.start(address)
    try:
        yield address
    finally:
        await server.close(grace=1.0)


async def fake_stats(address: str, container_id: str, *, timeout: float = 5.0) -> StatsResult:
    """Task/Stats as containerd sends it, on a fresh connection."""
    async with await Client.connect(address, timeout=timeout) as client:
        return await call_stats(client, container_id, namespace="k8s.io", timeout=timeout)


async def raw_call(address: str, service: str, method: str, payload: bytes, timeout_nano: int) -> bytes:
    """One call that sends ``timeout_nano`` but itself waits without a limit, so the status it returns is
    the server's own answer to the deadline (Client.call would give up at the same moment on its own)."""
    path = address.removeprefix("unix://")
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        request = encode_request(service, method, payload, timeout_nano=timeout_nano)
        writer.write(encode_frame(1, MessageType.REQUEST, 0, request))
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for event in decoder.feed(data):
                if isinstance(event, Frame) and event.mtype == MessageType.RESPONSE:
                    response = decode_response(event.payload)
                    error = error_from_status(response.status)
                    if error is not None:
                        raise error
                    return bytes(response.payload)
        raise TtrpcError(Code.UNAVAILABLE, f"{address} closed the connection without an answer")
    finally:
        writer.close()


class SilentAgent:
    """Accepts connections and reads requests, but never answers; records each request's timeout_nano."""

    def __init__(self, directory: Path) -> None:
        self.address = f"unix://{directory}/silent.sock"
        self.path = str(directory / "silent.sock")
        self.timeouts: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for event in decoder.feed(data):
                if isinstance(event, Frame) and event.mtype == MessageType.REQUEST:
                    self.timeouts.append(decode_request(event.payload).timeout_nano)

    async def __aenter__(self) -> SilentAgent:
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
