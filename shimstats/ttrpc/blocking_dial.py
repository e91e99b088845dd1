"""Dialling a ttrpc address with blocking sockets: unix, vsock and hybrid vsock, no event loop.

The threaded side of the project (SyncClient, the proxy's serving process) dials here; the asyncio side
(``dial.py``) shares the socket-making and error-wording rules below, so both report a failed dial alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.hvsock import HandshakeError, HandshakeReply, connect_request
from shimstats.ttrpc.transport import TransportError, as_address

__all__ = ["VSOCK_ANY", "dial", "dial_failure", "not_dialable", "vsock_socket"]

VSOCK_ANY = -1


def vsock_socket(addr: Address) -> socket.socket:
    """A new AF_VSOCK stream socket, or TransportError naming ``addr`` when this host cannot make one."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise TransportError(f"{addr}: this Python build has no AF_VSOCK (vsock needs Linux)")
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise TransportError(
            f"{addr}: the kernel refused an AF_VSOCK socket ({exc.strerror}); is the vsock module loaded?"
        ) from exc


def not_dialable(address: Address) -> TransportError | None:
    """Why ``address`` can never be dialled (a serial port, vsock CID -1), or None."""
    if address.kind == "serial":
        return TransportError(
            f"{address}: a serial port is served inside the guest; dial the VMM's unix socket for it instead"
        )
    if address.kind == "vsock" and address.cid == VSOCK_ANY:
        return TransportError(f"{address}: CID -1 means any and can only be listened on; dial a real CID")
    return None


def dial_failure(address: Address, exc: OSError) -> str:
    """Why a dial failed, in words: connecting to a regular file reports ECONNREFUSED, but "refused"
    would send the user looking for a dead server where there is none, only a file that is no socket."""
    if address.kind != "vsock" and exc.errno == errno.ECONNREFUSED:
        with contextlib.suppress(OSError):
            mode = os.stat(address.path).st_mode
            if not stat.S_ISSOCK(mode):
                return f"{address.path} is not a socket"
    return exc.strerror or str(exc)


def _handshake(sock: socket.socket, addr: Address) -> None:
    """CONNECT, then the VMM's answer one byte at a time, so no ttrpc byte after the newline is swallowed."""
    sock.sendall(connect_request(addr.port))
    reply = HandshakeReply(addr.port)
    try:
        while True:
            byte = sock.recv(1)
            if not byte:
                reply.eof()
            if reply.feed(byte) is not None:
                return
    except HandshakeError as exc:
        raise TransportError(f"{addr}: {addr.path} {exc}") from None


def dial(addr: Address | str, timeout: float | None) -> socket.socket:
    """A connected blocking socket (hvsock: past the handshake) within ``timeout`` seconds for the whole
    dial, or TransportError naming the address."""
    address = as_address(addr)
    refusal = not_dialable(address)
    if refusal is not None:
        raise refusal
    if address.kind == "vsock":
        sock = vsock_socket(address)
        target: str | tuple[int, int] = (address.cid, address.port)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target = address.path
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        if address.kind == "hvsock":
            _handshake(sock, address)
        sock.settimeout(None)
    except TransportError:
        sock.close()
        raise
    except TimeoutError:
        sock.close()
        raise TransportError(f"{address}: no connection within {timeout:g}s") from None
    except OSError as exc:
        sock.close()
        raise TransportError(f"{address}: cannot connect: {dial_failure(address, exc)}") from exc
    return sock
