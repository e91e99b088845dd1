"""Binding a ttrpc listening socket without an event loop: unix sockets made safely (a private directory,
stale files only ours), vsock, and the kernel's full accept queue. The asyncio listeners (``listen.py``)
and the threaded server (``threads.py``) both bind here."""

from __future__ import annotations

import os
import socket
import stat

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.blocking_dial import vsock_socket
from shimstats.ttrpc.probe import listening
from shimstats.ttrpc.transport import TransportError

__all__ = ["SOMAXCONN_PATH", "bound_socket", "listen_backlog", "unlink_if"]


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
        unlink_if(addr.path, None)
        raise


def bound_socket(address: Address, mode: int) -> tuple[socket.socket, int | None]:
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


def unlink_if(path: str, inode: int | None) -> None:
    try:
        if inode is None or os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
