"""Where the proxy listens, and removing socket files whose server is gone.

Our socket sits next to the inner shim's (containerd 1.6/1.7 keep them in ``/run/containerd/s``) and is
named after the inner address, so every container the inner shim serves (Kata: one shim per pod) shares one
proxy: a second ``start`` that gets the same inner address finds our socket already answering.

Shims remove their socket on the way out by reading the bundle's ``address`` file, which after our
``start`` names *our* socket. So the inner shim's own socket file is ours to clean once it stops answering.
"""

from __future__ import annotations

import _socket
import errno
import os
import stat
import time
from collections.abc import Callable

from shimstats.ttrpc.address import AddressError, parse_address  # not the package's lazy names (importlib)
from shimstats.ttrpc.probe import listening

__all__ = ["accepts", "listen_unix", "proxy_address", "remove_if_stale", "remover", "unix_path"]

LISTEN_BACKLOG = _socket.SOMAXCONN
"""Connections the kernel queues before the serving process accepts (containerd's come while it starts)."""


def unix_path(address: str) -> str:
    """The socket path of a ``unix://`` address; AddressError for anything else."""
    parsed = parse_address(address)
    if parsed.kind != "unix":
        raise AddressError(f"{address!r}: the shim address must be a unix socket")
    return parsed.path


def _sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, from CPython's own implementation where it has one: hashlib loads OpenSSL
    first, about 11M instructions (3 ms) of every ``start`` (docs/benchmarks.md)."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython 3.12+
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # CPython 3.9-3.11
        except ImportError:  # an interpreter built without them
            from hashlib import sha256
    return str(sha256(data).hexdigest())


def proxy_address(inner_address: str) -> str:
    """``unix://<dir of the inner socket>/<sha256 of "shimstats-proxy:<inner address>">``."""
    directory = os.path.dirname(unix_path(inner_address))
    digest = _sha256_hex(f"shimstats-proxy:{inner_address}".encode())
    address = f"unix://{directory}/{digest}"
    unix_path(address)  # same length as the inner's own (64 hex) name: fits when the inner's did
    return address


def accepts(path: str, timeout: float = 0.5) -> bool:
    """True when a server listens on the unix socket ``path`` (one probe for all: shimstats.ttrpc.probe)."""
    return listening(path, timeout)


def listen_unix(path: str) -> _socket.socket | None:
    """A socket bound to ``path`` (mode 0600) and listening, or None when another server got there first.

    As containerd's shims do in their ``start``: a missing directory is made private to us, and a stale
    socket file (nobody accepts) is replaced. Anything at ``path`` that is not a socket is an OSError.

    A ``_socket.socket`` (socket.socket's C base; close it, or hand its fd on): start needs no more of it,
    and importing ``socket`` (its enums) would cost it ~13M instructions (docs/benchmarks.md).
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if not remove_if_stale(path):
        if accepts(path):
            return None
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE and accepts(path):
            return None
        raise
    try:
        os.chmod(path, 0o600)  # before listen(): nobody connects while umask bits are on the file
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        _unlink(path)
        raise
    return sock


def remove_if_stale(path: str, wait: float = 0.0) -> bool:
    """Remove the socket file at ``path`` once nobody listens there (polling up to ``wait`` seconds).

    True when no file is left. Anything that is not a socket is never touched.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                return False
        except FileNotFoundError:
            return True
        if not accepts(path):
            _unlink(path)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _unlink(path: str) -> None:
    """Remove ``path`` if it is still there (without contextlib, ~3M instructions of every delete)."""
    try:  # noqa: SIM105 - contextlib.suppress is the import this module avoids
        os.unlink(path)
    except FileNotFoundError:
        pass


def _inode(path: str) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None


def remover(path: str) -> Callable[[], None]:
    """What removes the socket file at ``path`` later: only the file there now, never a successor's."""
    inode = _inode(path)

    def remove() -> None:
        if inode is not None and _inode(path) == inode:
            _unlink(path)

    return remove
