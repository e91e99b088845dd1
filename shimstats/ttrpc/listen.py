"""Listening on a ttrpc address: unix sockets made safely (private directory, stale files only ours, the
file removed on stop), vsock, and serial ports (``serial.py``); the kernel's full accept queue."""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Awaitable, Callable

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.bind import SOMAXCONN_PATH, bound_socket, listen_backlog, unlink_if
from shimstats.ttrpc.serial import SerialListener
from shimstats.ttrpc.transport import as_address

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
    bound, inode = bound_socket(address, mode)
    sock = _KernelBacklogSocket(bound.family, bound.type, bound.proto, fileno=bound.detach())
    try:
        server = await serve(sock)
    except BaseException:
        sock.close()
        if inode is not None:
            unlink_if(address.path, inode)
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


async def stop_listener(server: asyncio.Server) -> None:
    """Stop accepting, wait for the listener to close, and remove the socket file create_listener made."""
    server.close()
    await server.wait_closed()
    owned = _owned_files.pop(server, None)
    if owned is not None:
        unlink_if(*owned)
