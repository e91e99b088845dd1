"""Kata sandboxes on this node and what their shims answer, without an event loop: the rules
``discovery`` (asyncio) builds on, and a blocking ``/agent-url`` lookup for the proxy's threaded serving
process. The module doc of ``shimstats.discovery`` describes Kata's management API."""

from __future__ import annotations

import errno
import io
import os
import socket as socket_module
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shimstats.kata_spec import DEFAULT_ROOTS, KATA_AGENT, SHIMSTATS_AGENT_PORT, KataSpec
from shimstats.ttrpc.address import Address, AddressError, parse_address
from shimstats.ttrpc.transport import TransportError

if TYPE_CHECKING:
    from shimstats.kata_spec import AgentPort  # a type alias for type checkers only (typing-free at run time)

__all__ = [
    "AGENT_URL_PATH",
    "AGENT_URL_REQUEST",
    "ANSWER_MAX",
    "DEFAULT_TIMEOUT",
    "MONITOR_SOCKET",
    "AgentTarget",
    "DiscoveryError",
    "Sandbox",
    "agent_url_answer",
    "broken_answer",
    "dial_address",
    "find_sandbox",
    "first_shim_socket",
    "list_sandboxes",
    "lookup_failed",
    "read_agent_url_blocking",
    "unreachable_shim",
]

MONITOR_SOCKET = "shim-monitor.sock"
AGENT_URL_PATH = "/agent-url"
# Host is required by Go's HTTP/1.1 server; Kata's own client names it "shim".
AGENT_URL_REQUEST = f"GET {AGENT_URL_PATH} HTTP/1.1\r\nHost: shim\r\nConnection: close\r\n\r\n".encode()
DEFAULT_TIMEOUT = 3.0
"""Seconds for one ``/agent-url`` answer: kata-monitor's and ``kata-runtime exec``'s per-shim deadline."""
ANSWER_MAX = 64 * 1024  # an agent URL is one short line; more than this is not the Kata shim
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


def unreachable_shim(socket: str, exc: OSError) -> DiscoveryError:
    """Why the shim's management socket could not be dialled."""
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return DiscoveryError(socket, f"the shim is gone ({exc.strerror})")
    return DiscoveryError(socket, f"cannot connect: {exc.strerror or exc}")


def broken_answer(socket: str, exc: OSError) -> DiscoveryError:
    """The shim's connection failed while it answered."""
    return DiscoveryError(socket, f"connection failed mid-answer: {exc.strerror or exc}")


def agent_url_answer(raw: bytes, socket: str) -> str:
    """The agent URL in a shim's whole answer to GET /agent-url (read up to ANSWER_MAX + 1 bytes);
    DiscoveryError naming ``socket`` otherwise."""
    if len(raw) > ANSWER_MAX:
        raise DiscoveryError(socket, f"answer to GET {AGENT_URL_PATH} is over {ANSWER_MAX} bytes")
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


def read_agent_url_blocking(socket: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """``read_agent_url`` on blocking sockets: ``timeout`` bounds the whole exchange."""
    deadline = time.monotonic() + timeout
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(socket)
        except TimeoutError:
            raise
        except OSError as exc:
            raise unreachable_shim(socket, exc) from None
        raw = b""
        try:
            sock.sendall(AGENT_URL_REQUEST)
            while len(raw) <= ANSWER_MAX:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                more = sock.recv(ANSWER_MAX + 1 - len(raw))
                if not more:
                    break
                raw += more
        except TimeoutError:
            raise
        except OSError as exc:
            raise broken_answer(socket, exc) from None
    except TimeoutError:
        raise DiscoveryError(socket, f"no answer to GET {AGENT_URL_PATH} within {timeout:g}s") from None
    finally:
        sock.close()
    return agent_url_answer(raw, socket)


def first_shim_socket(spec: KataSpec) -> str:
    """The shim socket a ``kata://`` client names before its first lookup."""
    return os.path.join(spec.roots[0], spec.sandbox_id, MONITOR_SOCKET) if spec.roots else "/"


def lookup_failed(sandbox_id: str, exc: DiscoveryError) -> TransportError:
    """A failed agent lookup, as the dial failure it is."""
    return TransportError(f"cannot find the guest agent of sandbox {sandbox_id}: {exc}")
