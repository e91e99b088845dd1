"""Find Kata sandboxes on this node and the address of each one's guest agent, by asking Kata's own shim.

Every Kata shim serves a management API, HTTP on a unix socket in its sandbox's run directory
(kata-containers ``src/runtime/pkg/containerd-shim-v2/shim_management.go``: ``SocketPath``,
``GetSandboxesStoragePath`` = ``/run/vc/sbs`` for the Go runtime, ``GetSandboxesStoragePathRust`` =
``/run/kata`` for runtime-rs; the file is ``shim-monitor.sock``). ``GET /agent-url`` answers, as plain
text, the URL the shim itself dials its agent on:

* ``vsock://<cid>:<port>`` (QEMU: a real vsock, the CID random per VM; ``types/sandbox.go`` ``VSock.String``);
* ``hvsock://<uds path>:<port>`` (Cloud Hypervisor, Firecracker, Dragonball: ``HybridVSock.String``);
* ``remote://<tunnel socket>`` (peer pods: the agent is on another machine; we cannot dial it).

The Go shim answers 500 with the error text when it has no agent URL; runtime-rs answers 200 with an empty
body (``runtime-rs/crates/runtimes/src/shim_mgmt/handlers.rs``). kata-monitor and ``kata-runtime exec``
ask the same question with a 3 s deadline per shim (``kata-monitor/shim_client.go``).

We dial the same CID or socket with the port replaced by ours (2048 for shimstats-agent), or kept when the
guest runs only the stock kata-agent (``agent_port = "kata-agent"``). Every failure is a DiscoveryError
naming the shim's socket: a gone shim, an HTTP error, a body that is no URL, a slow answer, a scheme we
cannot dial.

API (what the proxy, ``shimstats discover`` and the exporter build on):

* ``list_sandboxes(roots)``: every sandbox whose directory holds ``shim-monitor.sock``;
* ``find_sandbox(sandbox_id, roots)``: one sandbox's socket (the Go root first, as Kata's own client does);
* ``await read_agent_url(socket, timeout)``: the shim's ``/agent-url`` answer;
* ``dial_address(agent_url, port, socket=...)``: the Address we dial for that answer;
* ``await resolve_agent(sandbox, port, timeout)``: the two above in one step (an ``AgentTarget``);
* ``KataAgentClient``: an AgentClient that asks the shim again at every dial; ``agent_client(spec)`` builds
  one from a proxy agent spec (``kata_spec``) or a plain address.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shimstats.agent_client import AgentClient, Backoff
from shimstats.kata_spec import (
    DEFAULT_ROOTS,
    KATA_AGENT,
    KATA_SPEC_SCHEME,
    SHIMSTATS_AGENT_PORT,
    AgentPort,
    KataSpec,
    kata_spec,
    parse_agent_port,
    parse_kata_spec,
)
from shimstats.ttrpc import Address, AddressError, TransportError, parse_address

__all__ = [
    "AGENT_URL_PATH",
    "DEFAULT_ROOTS",
    "DEFAULT_TIMEOUT",
    "KATA_AGENT",
    "KATA_SPEC_SCHEME",
    "MONITOR_SOCKET",
    "SHIMSTATS_AGENT_PORT",
    "AgentPort",
    "AgentTarget",
    "DiscoveryError",
    "KataAgentClient",
    "KataSpec",
    "Sandbox",
    "agent_client",
    "dial_address",
    "find_sandbox",
    "kata_spec",
    "list_sandboxes",
    "parse_agent_port",
    "parse_kata_spec",
    "read_agent_url",
    "resolve_agent",
]

MONITOR_SOCKET = "shim-monitor.sock"
AGENT_URL_PATH = "/agent-url"
DEFAULT_TIMEOUT = 3.0
"""Seconds for one ``/agent-url`` answer: kata-monitor's and ``kata-runtime exec``'s per-shim deadline."""
_ANSWER_MAX = 64 * 1024  # an agent URL is one short line; more than this is not the Kata shim
_DIALABLE = ("vsock", "hvsock")


class DiscoveryError(Exception):
    """The Kata shim at ``socket`` could not tell us where its agent is; the message says why."""

    def __init__(self, socket: str, reason: str) -> None:
        super().__init__(f"Kata shim at {socket}: {reason}")
        self.socket = socket
        self.reason = reason


@dataclass(frozen=True)
class Sandbox:
    """One Kata sandbox: its id (the pod sandbox id under CRI) and its shim's management socket."""

    id: str
    socket: str

    @property
    def root(self) -> str:
        """The directory holding this sandbox's directory (``/run/vc/sbs`` or ``/run/kata``)."""
        return os.path.dirname(os.path.dirname(self.socket))


@dataclass(frozen=True)
class AgentTarget:
    """What one sandbox's shim said and where that leads us."""

    sandbox: Sandbox
    agent_url: str
    """The shim's answer, as Kata dials it (its own agent's port)."""
    address: Address
    """What we dial: the same CID or socket, port replaced by the configured one (or kept)."""


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def list_sandboxes(roots: Iterable[str] = DEFAULT_ROOTS) -> list[Sandbox]:
    """Every sandbox under ``roots``: a directory holding ``shim-monitor.sock``, sorted by id.

    A root that does not exist holds no sandbox (Kata has not run here, or not that runtime). A root that
    exists but cannot be read is a DiscoveryError naming it. An id found under two roots is taken from the
    first, as Kata's own client does.
    """
    found: dict[str, Sandbox] = {}
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            raise DiscoveryError(root, f"cannot list the sandbox directory: {exc.strerror or exc}") from None
        for name in names:
            socket_path = os.path.join(root, name, MONITOR_SOCKET)
            if name not in found and _is_socket(socket_path):
                found[name] = Sandbox(name, socket_path)
    return [found[name] for name in sorted(found)]


def find_sandbox(sandbox_id: str, roots: Sequence[str] = DEFAULT_ROOTS) -> Sandbox:
    """The sandbox ``sandbox_id``'s shim socket under the first root that has it; DiscoveryError if none."""
    if not sandbox_id or "/" in sandbox_id or sandbox_id in (".", ".."):
        raise DiscoveryError(
            ", ".join(roots), f"{sandbox_id!r} is not a sandbox id (no '/', never empty, '.' or '..')"
        )
    candidates = [os.path.join(root, sandbox_id, MONITOR_SOCKET) for root in roots]
    for path in candidates:
        if _is_socket(path):
            return Sandbox(sandbox_id, path)
    raise DiscoveryError(
        " or ".join(candidates), f"no shim socket for sandbox {sandbox_id} (the shim is gone, or not started)"
    )


class _Received:
    """Bytes already read, shaped like the socket http.client.HTTPResponse parses from."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    def makefile(self, *_args: object, **_kwargs: object) -> io.BytesIO:
        return self._file


def _parse_response(raw: bytes, socket: str) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.x answer, by the standard library's parser (chunked included)."""
    import http.client  # imported here: the proxy's start-up path loads this module and rarely needs it

    response = http.client.HTTPResponse(_Received(raw))  # type: ignore[arg-type]
    try:
        response.begin()
        return response.status, response.read()
    except (http.client.HTTPException, ValueError) as exc:
        raise DiscoveryError(socket, f"not an HTTP answer to GET {AGENT_URL_PATH}: {exc!r}") from None


async def _exchange(socket: str) -> bytes:
    try:
        reader, writer = await asyncio.open_unix_connection(socket)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise DiscoveryError(socket, f"the shim is gone ({exc.strerror})") from None
        raise DiscoveryError(socket, f"cannot connect: {exc.strerror or exc}") from None
    try:
        # Host is required by Go's HTTP/1.1 server; Kata's own client names it "shim".
        writer.write(f"GET {AGENT_URL_PATH} HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read(_ANSWER_MAX + 1)
        while raw and len(raw) <= _ANSWER_MAX:
            more = await reader.read(_ANSWER_MAX + 1 - len(raw))
            if not more:
                break
            raw += more
    except OSError as exc:
        raise DiscoveryError(socket, f"connection failed mid-answer: {exc.strerror or exc}") from None
    finally:
        writer.close()
    if len(raw) > _ANSWER_MAX:
        raise DiscoveryError(socket, f"answer to GET {AGENT_URL_PATH} is over {_ANSWER_MAX} bytes")
    return raw


async def read_agent_url(socket: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """``GET /agent-url`` on a shim's management socket: the agent URL, stripped; DiscoveryError otherwise.

    ``timeout`` bounds the whole exchange (a paused or hung shim must not hold the caller).
    """
    try:
        raw = await asyncio.wait_for(_exchange(socket), timeout)
    except asyncio.TimeoutError:
        raise DiscoveryError(socket, f"no answer to GET {AGENT_URL_PATH} within {timeout:g}s") from None
    if not raw:
        raise DiscoveryError(socket, f"closed the connection without answering GET {AGENT_URL_PATH}")
    status, body = _parse_response(raw, socket)
    text = body.decode("utf-8", errors="replace").strip()
    if status != 200:
        detail = f": {text[:200]}" if text else ""
        raise DiscoveryError(socket, f"GET {AGENT_URL_PATH} answered HTTP {status}{detail}")
    if not text:
        # runtime-rs answers 200 and an empty body when the sandbox has no agent (yet).
        raise DiscoveryError(socket, "reports no agent URL (empty answer): the sandbox has no agent yet")
    return text


def dial_address(agent_url: str, port: AgentPort = SHIMSTATS_AGENT_PORT, *, socket: str = "") -> Address:
    """The address we dial for a shim's agent URL: same CID or socket, ``port`` or (``"kata-agent"``) Kata's.

    ``socket`` (the shim's) only goes into the error message; DiscoveryError for anything else than the
    vsock and hybrid-vsock forms.
    """
    where = socket or "unknown socket"
    scheme, sep, _rest = agent_url.partition("://")
    if not sep or not scheme.isalnum():
        raise DiscoveryError(where, f"agent URL {agent_url[:200]!r} is not a URL")
    if scheme not in _DIALABLE:
        why = " (a remote hypervisor: the agent is on another machine)" if scheme == "remote" else ""
        raise DiscoveryError(
            where,
            f"agent URL {agent_url!r}: scheme {scheme}{why} is not one we can dial; expected vsock or hvsock",
        )
    try:
        address = parse_address(agent_url)
    except AddressError as exc:
        raise DiscoveryError(where, f"agent URL {agent_url!r} does not parse: {exc}") from None
    if port == KATA_AGENT:
        return address
    return Address(address.kind, path=address.path, cid=address.cid, port=port)


async def resolve_agent(
    sandbox: Sandbox, port: AgentPort = SHIMSTATS_AGENT_PORT, timeout: float = DEFAULT_TIMEOUT
) -> AgentTarget:
    """Ask ``sandbox``'s shim for its agent URL and turn it into the address we dial."""
    url = await read_agent_url(sandbox.socket, timeout)
    return AgentTarget(sandbox, url, dial_address(url, port, socket=sandbox.socket))


class KataAgentClient(AgentClient):
    """An AgentClient whose every dial first asks the sandbox's Kata shim where the agent is.

    Kata serves ``/agent-url`` only once the sandbox runs (the proxy starts before that), and the answer
    holds a per-VM CID: so it is looked up when a connection is needed, not when the client is made. Until
    the first dial ``address`` is the shim socket we will ask; after, the agent address last dialled.
    """

    def __init__(
        self,
        spec: KataSpec,
        *,
        connect_timeout: float = 2.0,
        default_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        first = os.path.join(spec.roots[0], spec.sandbox_id, MONITOR_SOCKET) if spec.roots else "/"
        super().__init__(
            Address("unix", path=first),
            connect_timeout=connect_timeout,
            default_timeout=default_timeout,
            backoff=backoff,
        )
        self.spec = spec
        self.target: AgentTarget | None = None
        """The last answer the shim gave (None before the first dial)."""

    async def _target_address(self) -> Address:
        try:
            sandbox = find_sandbox(self.spec.sandbox_id, self.spec.roots)
            self.target = await resolve_agent(sandbox, self.spec.port, self.connect_timeout)
        except DiscoveryError as exc:
            raise TransportError(
                f"cannot find the guest agent of sandbox {self.spec.sandbox_id}: {exc}"
            ) from None
        return self.target.address


def agent_client(
    spec: str, *, connect_timeout: float = 2.0, default_timeout: float = 10.0, backoff: Backoff | None = None
) -> AgentClient:
    """An AgentClient for a proxy agent setting: a plain address, or a ``kata://`` spec (KataAgentClient)."""
    kata = parse_kata_spec(spec)
    if kata is None:
        return AgentClient(
            spec, connect_timeout=connect_timeout, default_timeout=default_timeout, backoff=backoff
        )
    return KataAgentClient(
        kata, connect_timeout=connect_timeout, default_timeout=default_timeout, backoff=backoff
    )
