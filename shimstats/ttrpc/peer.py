"""Who is on the other end of an accepted connection: the kernel's peer credentials (SO_PEERCRED) for unix
sockets, the remote CID and port for vsock. Go's ttrpc keeps the same job apart (unixcreds_linux.go)."""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple, Protocol

__all__ = ["Peer", "describe_peer"]


class Peer(NamedTuple):
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
