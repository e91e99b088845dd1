"""Where ttrpc bytes travel: one address syntax and the dial/listen code for each kind.

* ``unix:///abs/path`` (or a bare absolute path): a unix stream socket, as containerd shims use.
* ``vsock://CID:PORT``: AF_VSOCK, as kata-agent listens (``vsock://-1:1024``; CID -1 = any, for listening).
* ``hvsock:///path/to/kata.hvsock:PORT``: hybrid vsock (Firecracker, Cloud Hypervisor). Dial only: connect to
  the VMM's unix socket, send ``CONNECT <port>\\n``, and the VMM answers ``OK <host port>\\n`` once the guest
  has accepted; after that line the socket carries raw ttrpc.

Every error names the address, so a log line says which socket is at fault.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import struct
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

__all__ = [
    "STREAM_LIMIT",
    "Address",
    "AddressError",
    "ConnectedCallback",
    "Peer",
    "TransportError",
    "create_connection",
    "create_listener",
    "describe_peer",
    "open_connection",
    "parse_address",
    "start_listener",
    "stop_listener",
]

# StreamReader buffer limit: big enough that a 4 MiB frame does not pause the socket every 128 KiB.
STREAM_LIMIT = 1 << 20
_U32_MAX = 0xFFFFFFFF
_VSOCK_ANY = -1
# A handshake reply is "OK " plus a u32; Firecracker caps its request line at 32 bytes. Longer is junk.
_HANDSHAKE_MAX = 64
_SUN_PATH_MAX = 107  # sizeof(sun_path) - 1 on Linux

_DIGITS = re.compile(r"[0-9]+")
_CID = re.compile(r"-1|[0-9]+")
_HANDSHAKE_OK = re.compile(rb"OK [0-9]+")

P = TypeVar("P", bound=asyncio.BaseProtocol)
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class AddressError(ValueError):
    """The text is not an address we understand."""


class TransportError(ConnectionError):
    """Dialing or listening failed; the message names the address and the reason."""


@dataclass(frozen=True)
class Address:
    """A parsed address; ``str()`` gives the canonical text back, and parsing that gives an equal Address."""

    kind: Literal["unix", "vsock", "hvsock"]
    path: str = ""
    cid: int = 0
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        if self.kind == "vsock":
            return f"vsock://{self.cid}:{self.port}"
        return f"hvsock://{self.path}:{self.port}"


def _socket_path(path: str, text: str) -> str:
    if not path.startswith("/"):
        raise AddressError(f"{text!r}: the socket path must be absolute")
    if "\0" in path or len(path.encode()) > _SUN_PATH_MAX:
        raise AddressError(
            f"{text!r}: not a usable unix socket path (NUL byte or over {_SUN_PATH_MAX} bytes)"
        )
    return path


def _u32(digits: str, what: str, text: str) -> int:
    if not _DIGITS.fullmatch(digits) or int(digits) > _U32_MAX:
        raise AddressError(f"{text!r}: {what} must be a number from 0 to {_U32_MAX}, not {digits!r}")
    return int(digits)


def parse_address(text: str) -> Address:
    """Parse ``unix:///path``, a bare absolute path, ``vsock://CID:PORT`` or ``hvsock:///path:PORT``."""
    if text.startswith("/"):
        return Address("unix", path=_socket_path(text, text))
    scheme, sep, rest = text.partition("://")
    if scheme == "unix" and sep:
        return Address("unix", path=_socket_path(rest, text))
    if scheme == "vsock" and sep:
        cid_text, colon, port_text = rest.partition(":")
        if not colon:
            raise AddressError(f"{text!r}: expected vsock://CID:PORT")
        if not _CID.fullmatch(cid_text) or int(cid_text) > _U32_MAX:
            raise AddressError(f"{text!r}: CID must be -1 (any) or a number from 0 to {_U32_MAX}")
        return Address("vsock", cid=int(cid_text), port=_u32(port_text, "port", text))
    if scheme == "hvsock" and sep:
        path, colon, port_text = rest.rpartition(":")
        if not colon:
            raise AddressError(
                f"{text!r}: the guest port is missing; expected hvsock:///path/to/vmm.sock:PORT"
            )
        return Address("hvsock", path=_socket_path(path, text), port=_u32(port_text, "port", text))
    raise AddressError(f"{text!r}: expected unix:///path, vsock://CID:PORT or hvsock:///path:PORT")


def _as_address(addr: Address | str) -> Address:
    return addr if isinstance(addr, Address) else parse_address(addr)


def _vsock_socket(addr: Address) -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise TransportError(f"{addr}: this Python build has no AF_VSOCK (vsock needs Linux)")
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(
            f"{addr}: the kernel refused an AF_VSOCK socket ({exc.strerror}); is the vsock module loaded?"
        ) from exc


async def _connect_vsock(loop: asyncio.AbstractEventLoop, addr: Address) -> socket.socket:
    if addr.cid == _VSOCK_ANY:
        raise TransportError(f"{addr}: CID -1 means any and can only be listened on; dial a real CID")
    sock = _vsock_socket(addr)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (addr.cid, addr.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _hybrid_handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: Address) -> None:
    """Send CONNECT and read the reply one byte at a time, so no ttrpc byte after the newline is swallowed."""
    await loop.sock_sendall(sock, f"CONNECT {addr.port}\n".encode())
    line = bytearray()
    while len(line) <= _HANDSHAKE_MAX:
        byte = await loop.sock_recv(sock, 1)
        if not byte:
            got = f"; it sent {bytes(line)!r} first" if line else ""
            raise TransportError(
                f"{addr}: {addr.path} closed the connection instead of answering CONNECT {addr.port}{got} "
                f"(is anything listening on guest vsock port {addr.port}?)"
            )
        if byte == b"\n":
            if _HANDSHAKE_OK.fullmatch(line):
                return
            break
        line += byte
    raise TransportError(
        f"{addr}: {addr.path} answered CONNECT {addr.port} with {bytes(line)!r}, expected 'OK <port>'"
    )


async def _connect_unix(loop: asyncio.AbstractEventLoop, addr: Address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, addr.path)
        if addr.kind == "hvsock":
            await _hybrid_handshake(loop, sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connected_socket(address: Address, timeout: float | None) -> socket.socket:
    """A connected non-blocking socket (hvsock: past the handshake), or TransportError naming the address."""
    loop = asyncio.get_running_loop()
    dial = _connect_vsock(loop, address) if address.kind == "vsock" else _connect_unix(loop, address)
    try:
        return await asyncio.wait_for(dial, timeout)
    except TransportError:
        raise
    except asyncio.TimeoutError:
        raise TransportError(f"{address}: no connection within {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(f"{address}: cannot connect: {exc.strerror or exc}") from exc


async def create_connection(
    addr: Address | str, protocol_factory: Callable[[], P], timeout: float | None
) -> tuple[asyncio.Transport, P]:
    """Connect and drive the connection with an asyncio Protocol (the fast path the ttrpc client uses)."""
    address = _as_address(addr)
    sock = await _connected_socket(address, timeout)
    try:
        transport, protocol = await asyncio.get_running_loop().create_connection(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, protocol


async def open_connection(
    addr: Address | str, timeout: float | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect (for hvsock also handshake) within ``timeout`` seconds, or raise TransportError."""
    address = _as_address(addr)
    sock = await _connected_socket(address, timeout)
    try:
        return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
    except BaseException:
        sock.close()
        raise


# Unix socket files we created, by listener, so stop_listener removes ours and never a successor's.
_owned_files: weakref.WeakKeyDictionary[asyncio.Server, tuple[str, int]] = weakref.WeakKeyDictionary()


def _clear_stale_socket(addr: Address) -> None:
    """Remove a leftover socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(addr.path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(f"{addr}: {addr.path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(addr.path)
    except ConnectionRefusedError:
        os.unlink(addr.path)  # stale: the listener is gone
        return
    except BlockingIOError:
        pass  # the backlog is full: someone is listening
    finally:
        probe.close()
    raise TransportError(f"{addr}: another server is already listening there")


def _bound_unix_socket(addr: Address, mode: int) -> tuple[socket.socket, int]:
    # Like containerd's shims: make a missing parent directory, private to us.
    os.makedirs(os.path.dirname(addr.path), mode=0o700, exist_ok=True)
    _clear_stale_socket(addr)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(addr.path)
    except BaseException:
        sock.close()
        raise
    try:
        # chmod before listen(): nobody can connect until then, so umask bits are never exposed.
        os.chmod(addr.path, mode)
        return sock, os.lstat(addr.path).st_ino
    except BaseException:
        sock.close()
        _unlink_if(addr.path, None)
        raise


def _bound_socket(address: Address, mode: int) -> tuple[socket.socket, int | None]:
    """A bound, not yet listening socket and, for unix, the inode of the socket file we made."""
    try:
        if address.kind == "unix":
            return _bound_unix_socket(address, mode)
        if address.kind == "vsock":
            sock = _vsock_socket(address)
            try:
                sock.bind((address.cid & _U32_MAX, address.port))
            except BaseException:
                sock.close()
                raise
            return sock, None
    except TransportError:
        raise
    except OSError as exc:
        raise TransportError(f"{address}: cannot listen: {exc.strerror or exc}") from exc
    raise TransportError(f"{address}: hybrid vsock is dial-only; the guest side listens on plain vsock")


async def _serve_socket(
    address: Address, mode: int, serve: Callable[[socket.socket], Awaitable[asyncio.Server]]
) -> asyncio.Server:
    sock, inode = _bound_socket(address, mode)
    try:
        server = await serve(sock)
    except BaseException:
        sock.close()
        if inode is not None:
            _unlink_if(address.path, inode)
        raise
    if inode is not None:
        _owned_files[server] = (address.path, inode)
    return server


async def create_listener(
    addr: Address | str, protocol_factory: Callable[[], asyncio.BaseProtocol], *, mode: int = 0o600
) -> asyncio.Server:
    """Listen on ``addr`` with one asyncio Protocol per connection (the ttrpc server's fast path)."""
    loop = asyncio.get_running_loop()
    return await _serve_socket(
        _as_address(addr), mode, lambda sock: loop.create_server(protocol_factory, sock=sock)
    )


async def start_listener(
    addr: Address | str, callback: ConnectedCallback, *, mode: int = 0o600
) -> asyncio.Server:
    """Listen on ``addr`` and run ``callback(reader, writer)`` per connection; unix sockets get ``mode``."""
    return await _serve_socket(
        _as_address(addr),
        mode,
        lambda sock: asyncio.start_server(callback, sock=sock, limit=STREAM_LIMIT),
    )


def _unlink_if(path: str, inode: int | None) -> None:
    try:
        if inode is None or os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def stop_listener(server: asyncio.Server) -> None:
    """Stop accepting, wait for the listener to close, and remove the socket file start_listener made."""
    server.close()
    await server.wait_closed()
    owned = _owned_files.pop(server, None)
    if owned is not None:
        _unlink_if(*owned)


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a server connection.

    For unix sockets ``pid``/``uid``/``gid`` are the kernel's SO_PEERCRED values (containerd checks the uid
    the same way); ``address`` is the local listener for unix and the remote ``vsock://CID:PORT`` for vsock.
    """

    address: str
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None


_UCRED = struct.Struct("3i")


class _HasExtraInfo(Protocol):
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


def describe_peer(transport: _HasExtraInfo) -> Peer:
    """Peer details of an accepted connection, read once when it starts."""
    sock = transport.get_extra_info("socket")
    try:
        if sock is None:
            return Peer(address=str(transport.get_extra_info("peername")))
        if sock.family == socket.AF_UNIX:
            return _unix_peer(sock)
        if sock.family == getattr(socket, "AF_VSOCK", None):
            cid, port = sock.getpeername()
            return Peer(address=f"vsock://{cid}:{port}")
        return Peer(address=str(sock.getpeername()))
    except OSError:  # the peer is already gone
        return Peer(address="unknown peer")


def _unix_peer(sock: Any) -> Peer:
    local = sock.getsockname()
    address = f"unix://{local}" if isinstance(local, str) and local else "unix"
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:
        return Peer(address=address)
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size))
    return Peer(address=address, pid=pid, uid=uid, gid=gid)
