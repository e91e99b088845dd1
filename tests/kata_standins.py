"""Stand-ins for the Kata parts that cannot run here: a shim's management socket and a VMM's hybrid vsock.

``KataShimStandIn`` serves HTTP on ``<root>/<sandbox>/shim-monitor.sock`` the way Kata's shims do:
* ``flavor="go"`` follows kata-containers ``src/runtime/pkg/containerd-shim-v2/shim_management.go``:
  ``/agent-url`` for any method, 200 with the URL as text/plain, or 500 with the error's text when the
  sandbox has no agent URL; other paths get Go's ServeMux 404 ``404 page not found``;
* ``flavor="rs"`` follows ``src/runtime-rs/crates/runtimes/src/shim_mgmt/handlers.rs``: only GET, the URL
  with status 200, an **empty** 200 when there is none, ``URL NOT FOUND`` (404) for the rest.
Faults on top: ``hang`` (accepts, never answers), ``raw`` (these bytes instead of HTTP).

``KataAgentService`` answers as the stock kata-agent does: grpc.AgentService/StatsContainer and grpc.Health
only (no shimstats Resources service), and on a cgroup v2 guest with the fields kata-agent leaves empty
(docs/spec/metrics.md §5.3; the rule is ``kata_agent_v2`` in tests/unit/test_translate_builders.py). It reads
the same cgroup files as our agent, so the two can be compared figure by figure.

``HybridVsockMuxer`` is a VMM's hybrid-vsock socket (Firecracker, Cloud Hypervisor): it reads
``CONNECT <port>\\n``, answers, and splices the connection to the unix socket serving that guest port
(docs/spec/ttrpc.md §7.1). Real vhost-vsock (QEMU) needs a VM: not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Literal

from guest_agent.layout import detect_layout
from guest_agent.lookup import ContainerLocator
from guest_agent.reader import CgroupReader
from guest_agent.service import AgentService
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats.discovery import MONITOR_SOCKET
from shimstats.ttrpc import CallContext, Server
from shimstats.wire import AGENT_SERVICE, HEALTH_SERVICE
from tests.integration.harness import Fixture, fixtures
from tests.translate_builders import kata_agent_v2

__all__ = ["HybridVsockMuxer", "KataAgentService", "KataShimStandIn", "muxer_in_thread"]

KATA_AGENT_VERSION = "3.2.0"


KATA_PORT = 1024
"""The vsock port a stock kata-agent listens on."""
OUR_PORT = 2048
"""The vsock port our agent listens on next to it."""


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False


class KataShimStandIn:
    """One Kata shim's management socket; change ``agent_url``/``error``/``hang``/``raw`` at any time."""

    def __init__(
        self,
        root: Path,
        sandbox_id: str,
        agent_url: str = "",
        *,
        flavor: Literal["go", "rs"] = "go",
        error: str = "",
        poll_interval: float = 0.02,
    ) -> None:
        self.directory = root / sandbox_id
        self.socket = self.directory / MONITOR_SOCKET
        self.sandbox_id = sandbox_id
        self.agent_url = agent_url
        self.flavor = flavor
        self.error = error
        """Non-empty: the sandbox has no agent URL (Go: 500 with this text; runtime-rs: empty 200)."""
        self.hang = False
        self.raw: bytes | None = None
        self.requests: list[tuple[str, str]] = []
        self.poll_interval = poll_interval
        """How often the serving thread looks for stop(): short for tests, longer when many run at once."""
        self._server: _UnixHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self) -> None:
                shim.requests.append((self.command, self.path))
                if shim.hang:
                    shim._release.wait()
                    self.close_connection = True
                    return
                if shim.raw is not None:
                    self.wfile.write(shim.raw)
                    self.close_connection = True
                    return
                if shim.flavor == "go":
                    if self.path != "/agent-url":
                        self._answer(404, "404 page not found\n")
                    elif shim.error:
                        self._answer(500, shim.error)
                    else:
                        self._answer(200, shim.agent_url)
                    return
                if (self.command, self.path) != ("GET", "/agent-url"):
                    self._answer(404, "URL NOT FOUND")
                else:
                    self._answer(200, "" if shim.error else shim.agent_url)

            do_GET = do_PUT = do_POST = _serve

            def address_string(self) -> str:
                return "unix"

        return Handler

    def start(self) -> KataShimStandIn:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = _UnixHTTPServer(str(self.socket), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self.poll_interval,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, remove_socket: bool = True) -> None:
        """Stop answering; ``remove_socket=False`` leaves the file behind, like a shim that was killed."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if remove_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)

    def __enter__(self) -> KataShimStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HybridVsockMuxer:
    """A VMM's hybrid-vsock socket: ``CONNECT <port>\\n``, then a splice to the socket serving that port.

    ``backends`` maps a guest port to the unix socket of the server listening on it (a Path alone serves
    every port). A port nobody listens on gets the connection closed without a word, as a guest's reset
    reaches the host. ``reply`` overrides the handshake answer: None hangs up, b"" never answers.
    """

    def __init__(
        self,
        path: Path,
        backends: Path | Mapping[int, Path],
        reply: bytes | None = b"OK 1073741824\n",
    ) -> None:
        self.path = path
        self.backends = backends
        self.reply = reply
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.listener: asyncio.Server | None = None

    async def __aenter__(self) -> HybridVsockMuxer:
        self.listener = await asyncio.start_unix_server(self.handle, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.listener is not None
        self.listener.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.listener.wait_closed()

    def _backend(self, request: bytes) -> Path | None:
        if isinstance(self.backends, Path):
            return self.backends
        words = request.split()
        if len(words) != 2 or words[0] != b"CONNECT" or not words[1].isdigit():
            return None
        return self.backends.get(int(words[1]))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            request = await reader.readuntil(b"\n")
            self.requests.append(request)
            backend = self._backend(request)
            if self.reply is None or backend is None:
                return
            if not self.reply:
                await asyncio.Event().wait()  # silent until cancelled
            writer.write(self.reply)
            if not self.reply.startswith(b"OK "):
                return
            back_reader, back_writer = await asyncio.open_unix_connection(str(backend))
            try:
                await asyncio.gather(self.pump(reader, back_writer), self.pump(back_reader, writer))
            finally:
                back_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the dialler went away, or the backend is down: the connection just ends
        finally:
            writer.close()
            self.tasks.discard(task)

    @staticmethod
    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        sink.close()


@contextlib.contextmanager
def muxer_in_thread(path: Path, backends: Path | Mapping[int, Path]) -> Iterator[HybridVsockMuxer]:
    """A HybridVsockMuxer on its own event loop in a thread, for tests that block (subprocesses, ctr)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    mux = HybridVsockMuxer(path, backends)
    try:
        asyncio.run_coroutine_threadsafe(mux.__aenter__(), loop).result(10)
        try:
            yield mux
        finally:
            asyncio.run_coroutine_threadsafe(mux.__aexit__(None, None, None), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


class KataAgentService(AgentService):
    """The stock kata-agent's answers for the cgroups our guest agent's reader reads (module doc)."""

    def register(self, server: Server) -> None:
        server.register(AGENT_SERVICE, {"StatsContainer": self.stats_container})
        server.register(HEALTH_SERVICE, {"Check": self.check, "Version": self.version})

    def stats(self, container_id: str) -> agent_pb2.StatsContainerResponse:
        ours = super().stats(container_id)
        return kata_agent_v2(ours) if self.reader.layout.primary.version == 2 else ours

    def version(self, payload: bytes, ctx: CallContext) -> bytes:
        return health_pb2.VersionCheckResponse(
            grpc_version="ttrpc", agent_version=KATA_AGENT_VERSION
        ).SerializeToString()


@contextlib.asynccontextmanager
async def guest(fx: Fixture, directory: Path) -> AsyncIterator[dict[int, Path]]:
    """One VM's agents for ``fx``: ours on port 2048 and a stock kata-agent on 1024 (unix sockets)."""
    layout = detect_layout(str(fx.path / "cgroup"))
    reader = CgroupReader(layout, meminfo=str(fx.path / "meminfo"))
    explicit = {} if fx.is_root else {fx.request_id: str(fx.meta["container_path"])}
    root_ids = (fx.request_id,) if fx.is_root else ()
    locator = ContainerLocator(layout, explicit, root_ids)
    servers: dict[int, Path] = {}
    started: list[Server] = []
    try:
        for port, service in ((OUR_PORT, AgentService), (KATA_PORT, KataAgentService)):
            server = Server()
            service(reader, locator).register(server)
            path = directory / f"agent-{port}.sock"
            await server.start(f"unix://{path}")
            started.append(server)
            servers[port] = path
        yield servers
    finally:
        for server in started:
            await server.close()
        reader.close()


def container_fixtures() -> list[Fixture]:
    chosen: dict[int, Fixture] = {}
    for fx in fixtures():
        if not fx.is_root:
            chosen.setdefault(fx.guest_version, fx)
    return [chosen[v] for v in sorted(chosen)]
