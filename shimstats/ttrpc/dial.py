"""Dialling a ttrpc address: a connected socket for unix, vsock and hybrid vsock (past its handshake)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.blocking_dial import dial_failure, not_dialable, vsock_socket
from shimstats.ttrpc.hvsock import HandshakeError, HandshakeReply, connect_request
from shimstats.ttrpc.transport import TransportError, as_address

__all__ = ["connected_socket", "create_connection", "vsock_socket"]

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def _connect_vsock(loop: asyncio.AbstractEventLoop, addr: Address) -> socket.socket:
    sock = vsock_socket(addr)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (addr.cid, addr.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _hybrid_handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: Address) -> None:
    """Send CONNECT and read the reply one byte at a time, so no ttrpc byte after the newline is swallowed."""
    await loop.sock_sendall(sock, connect_request(addr.port))
    reply = HandshakeReply(addr.port)
    try:
        while True:
            byte = await loop.sock_recv(sock, 1)
            if not byte:
                reply.eof()
            if reply.feed(byte) is not None:
                return
    except HandshakeError as exc:
        raise TransportError(f"{addr}: {addr.path} {exc}") from None


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


async def connected_socket(address: Address, timeout: float | None) -> socket.socket:
    """A connected non-blocking socket (hvsock: past the handshake), or TransportError naming the address."""
    refusal = not_dialable(address)
    if refusal is not None:
        raise refusal
    loop = asyncio.get_running_loop()
    dial = _connect_vsock(loop, address) if address.kind == "vsock" else _connect_unix(loop, address)
    try:
        return await asyncio.wait_for(dial, timeout)
    except TransportError:
        raise
    except asyncio.TimeoutError:
        raise TransportError(f"{address}: no connection within {timeout:g}s") from None
    except OSError as exc:
        raise TransportError(f"{address}: cannot connect: {dial_failure(address, exc)}") from exc


async def create_connection(
    addr: Address | str, protocol_factory: Callable[[], P], timeout: float | None
) -> tuple[asyncio.Transport, P]:
    """Connect and drive the connection with an asyncio Protocol (the fast path the ttrpc client uses)."""
    address = as_address(addr)
    sock = await connected_socket(address, timeout)
    try:
        transport, protocol = await asyncio.get_running_loop().create_connection(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, protocol
