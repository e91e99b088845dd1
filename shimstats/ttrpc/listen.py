"""Listening on a ttrpc address: unix sockets made safely (private directory, stale files only ours, the
file removed on stop), vsock, and serial ports (``serial.py``); the kernel's full accept queue."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import weakref
from collections.abc import Awaitable, Callable

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.blocking_dial import vsock_socket
from shimstats.ttrpc.probe import listening
from shimstats.ttrpc.serial import SerialListener
from shimstats.ttrpc.transport import TransportError, as_address

__all__ = [
    "ACCEPT_BATCH",
    "SOMAXCONN_PATH",
    "adopt_listener",
    "create_listener",
    "listen_backlog",
    "stop_listener",
]

# Unix socket files we created, by listener, so stop_listener removes ours and never a successor's.
_owned_files: weakref.WeakKeyDictionary[asyncio.Server, tuple[str, int]] = weakref.WeakKeyDictionary()


def _check_socket_directory(addr: Address, directory: str) -> None:
    """Refuse a directory where someone else could swap our socket: owned by another user (root is
    fine), or writable by group or others without the sticky bit."""
    st = os.stat(directory)
    if st.st_uid not in (os.geteuid(), 0):
        raise TransportError(f"{addr}: {directory} belongs to uid {st.st_uid}; not listening there")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise TransportError(
            f"{addr}: {directory} is writable by others (mode {stat.S_IMODE(st.st_mode):o}, no sticky bit); "
            "not listening there"
        )


def _clear_stale_socket(addr: Address) -> None:
    """Remove a leftover socket file of ours nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(addr.path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(f"{addr}: {addr.path} exists and is not a socket; not replacing it")
    if st.st_uid != os.geteuid():
        raise TransportError(f"{addr}: {addr.path} belongs to uid {st.st_uid}; not replacing it")
    if not listening(addr.path):
        os.unlink(addr.path)  # stale: the listener is gone
        return
    raise TransportError(f"{addr}: another server is already listening there")


def _bound_unix_socket(addr: Address, mode: int) -> tuple[socket.socket, int]:
    # Like containerd's shims: make a missing parent directory, private to us.
    directory = os.path.dirname(addr.path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _check_socket_directory(addr, directory)
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
            sock = vsock_socket(address)
            try:
                sock.bind((address.cid & 0xFFFFFFFF, address.port))  # -1 (any) is VMADDR_CID_ANY
            except BaseException:
                sock.close()
                raise
            return sock, None
    except TransportError:
        raise
    except OSError as exc:
        raise TransportError(f"{address}: cannot listen: {exc.strerror or exc}") from exc
    raise TransportError(f"{address}: hybrid vsock is dial-only; the guest side listens on plain vsock")


SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
_INT_MAX = 2**31 - 1  # listen() takes a C int; the kernel clamps any larger request to somaxconn anyway


def listen_backlog(path: str | os.PathLike[str] = SOMAXCONN_PATH) -> int:
    """The accept queue to ask for: the kernel's maximum, read as Go's net.Listen reads it.

    asyncio's default (100) makes a burst of connections to a server that is briefly not accepting fail with
    EAGAIN from the 101st on, where containerd's Go ttrpc servers queue them all. Like Go
    (src/net/sock_linux.go maxListenerBacklog), a missing, empty, zero or unparsable value means
    socket.SOMAXCONN.
    """
    try:
        with open(path, encoding="ascii") as f:
            value = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return socket.SOMAXCONN
    return min(value, _INT_MAX) if value > 0 else socket.SOMAXCONN


ACCEPT_BATCH = 32
"""Connections our listeners accept per event-loop wake-up (asyncio's ``backlog`` argument, which it also
passes to listen(); _KernelBacklogSocket overrides that). Small, so that draining a deep queue of connects
interleaves with the connections being served, and the accepted-but-not-yet-refused connections of a flood
stay few (tests/integration/test_hostile_sockets.py bounds the fds)."""


class _KernelBacklogSocket(socket.socket):
    """A listening socket whose accept queue is always the kernel's maximum (listen_backlog()), whatever
    backlog asyncio asks for: asyncio's backlog is only how many it accepts per wake-up (ACCEPT_BATCH)."""

    def listen(self, backlog: int | None = None) -> None:
        super().listen(listen_backlog())


async def _serve_socket(
    address: Address, mode: int, serve: Callable[[socket.socket], Awaitable[asyncio.Server]]
) -> asyncio.Server:
    bound, inode = _bound_socket(address, mode)
    sock = _KernelBacklogSocket(bound.family, bound.type, bound.proto, fileno=bound.detach())
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
    address = as_address(addr)
    if address.kind == "serial":
        return SerialListener(address, protocol_factory)
    loop = asyncio.get_running_loop()
    return await _serve_socket(
        address, mode, lambda sock: loop.create_server(protocol_factory, sock=sock, backlog=ACCEPT_BATCH)
    )


async def adopt_listener(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]
) -> asyncio.Server:
    """Serve a socket that is already bound and listening (made by the caller, or by another process that
    handed it over); the kernel's full accept queue applies, and its file stays the caller's to remove."""
    adopted = _KernelBacklogSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    loop = asyncio.get_running_loop()
    return await loop.create_server(protocol_factory, sock=adopted, backlog=ACCEPT_BATCH)


def _unlink_if(path: str, inode: int | None) -> None:
    try:
        if inode is None or os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def stop_listener(server: asyncio.Server) -> None:
    """Stop accepting, wait for the listener to close, and remove the socket file create_listener made."""
    server.close()
    await server.wait_closed()
    owned = _owned_files.pop(server, None)
    if owned is not None:
        _unlink_if(*owned)
