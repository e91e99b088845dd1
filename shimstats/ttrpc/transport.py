"""Where ttrpc bytes travel: one address syntax and the dial/listen code for each kind.

* ``unix:///abs/path`` (or a bare absolute path): a unix stream socket, as containerd shims use.
* ``vsock://CID:PORT``: AF_VSOCK, as kata-agent listens (``vsock://-1:1024``; CID -1 = any, for listening).
* ``hvsock:///path/to/kata.hvsock:PORT``: hybrid vsock (Firecracker, Cloud Hypervisor). Dial only: connect to
  the VMM's unix socket, send ``CONNECT <port>\\n``, and the VMM answers ``OK <host port>\\n`` once the guest
  has accepted; after that line the socket carries raw ttrpc.
* ``serial:///dev/vport0p1``: a virtio-serial port in a guest (how Kata 1.x reached its agent). Listen only:
  the port is one byte stream, served as one connection for as long as the host end is open; the host dials
  the unix socket the VMM made for it (qemu ``-chardev socket``), so the host side is a plain ``unix://``.

Every error names the address, so a log line says which socket is at fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import socket
import stat
import struct
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shimstats.ttrpc.address import Address, AddressError, parse_address

__all__ = [
    "ACCEPT_BATCH",
    "SOMAXCONN_PATH",
    "STREAM_LIMIT",
    "Address",
    "AddressError",
    "ConnectedCallback",
    "Peer",
    "SerialListener",
    "TransportError",
    "adopt_listener",
    "create_connection",
    "create_listener",
    "describe_peer",
    "listen_backlog",
    "open_connection",
    "parse_address",
    "start_listener",
    "stop_listener",
]

_log = logging.getLogger("shimstats.ttrpc")

# StreamReader buffer limit: big enough that a 4 MiB frame does not pause the socket every 128 KiB.
STREAM_LIMIT = 1 << 20
_U32_MAX = 0xFFFFFFFF
_VSOCK_ANY = -1
# A handshake reply is "OK " plus a u32; Firecracker caps its request line at 32 bytes. Longer is junk.
_HANDSHAKE_MAX = 64

_HANDSHAKE_OK = re.compile(rb"OK [0-9]+")

P = TypeVar("P", bound=asyncio.BaseProtocol)
ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class TransportError(ConnectionError):
    """Dialing or listening failed; the message names the address and the reason."""


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
    if address.kind == "serial":
        raise TransportError(
            f"{address}: a serial port is served inside the guest; dial the VMM's unix socket for it instead"
        )
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


async def adopt_listener(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]
) -> asyncio.Server:
    """Serve a socket another process bound and listens on (handed over as an fd, as containerd's shims
    hand theirs to their serving child), with the kernel's maximum accept queue; its file stays theirs."""
    adopted = _KernelBacklogSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    loop = asyncio.get_running_loop()
    return await loop.create_server(protocol_factory, sock=adopted, backlog=ACCEPT_BATCH)


async def create_listener(
    addr: Address | str, protocol_factory: Callable[[], asyncio.BaseProtocol], *, mode: int = 0o600
) -> asyncio.Server:
    """Listen on ``addr`` with one asyncio Protocol per connection (the ttrpc server's fast path)."""
    address = _as_address(addr)
    if address.kind == "serial":
        return SerialListener(address, protocol_factory)
    loop = asyncio.get_running_loop()
    return await _serve_socket(
        address, mode, lambda sock: loop.create_server(protocol_factory, sock=sock, backlog=ACCEPT_BATCH)
    )


async def start_listener(
    addr: Address | str, callback: ConnectedCallback, *, mode: int = 0o600
) -> asyncio.Server:
    """Listen on ``addr`` and run ``callback(reader, writer)`` per connection; unix sockets get ``mode``."""
    address = _as_address(addr)
    if address.kind == "serial":
        return SerialListener(address, functools.partial(_stream_protocol, callback))
    return await _serve_socket(
        address,
        mode,
        lambda sock: asyncio.start_server(callback, sock=sock, limit=STREAM_LIMIT, backlog=ACCEPT_BATCH),
    )


def _stream_protocol(callback: ConnectedCallback) -> asyncio.StreamReaderProtocol:
    """What asyncio.start_server makes per connection: a reader, and the callback run once connected."""
    return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=STREAM_LIMIT), callback)


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


# -- serial ports -------------------------------------------------------------------------------------------

SERIAL_POLL = 0.1
"""Seconds between looks at a serial port whose host end is closed. The port cannot say when the host
comes back in a way an event loop can wait for (poll() keeps reporting it readable, read() returns 0), so
the listener looks again this often, and only while nobody is connected."""
_SERIAL_HIGH_WATER = 64 * 1024


def _host_gone(exc: OSError) -> bool:
    """EIO is how a pseudo-terminal says its other end is closed (a virtio port returns 0 bytes instead)."""
    return exc.errno == errno.EIO


class _SerialTransport(asyncio.Transport):
    """One connection over an open serial port: non-blocking reads and writes on its file descriptor.

    The host closing its end reads as end of file; the connection then ends and the listener waits for
    the next one. ``done`` resolves once the protocol has been told the connection is lost.
    """

    def __init__(
        self,
        fd: int,
        protocol: asyncio.BaseProtocol,
        address: Address,
        first: bytes,
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(extra={"peername": str(address)})
        if not isinstance(protocol, (asyncio.Protocol, asyncio.BufferedProtocol)):
            raise TypeError("a serial port carries a stream: the protocol must be a (Buffered)Protocol")
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._protocol = protocol
        self._buffer = bytearray()
        self._closing = False
        self._finished = False
        self._reading = True
        self._protocol_paused = False
        self._high, self._low = _SERIAL_HIGH_WATER, _SERIAL_HIGH_WATER // 4
        self.done = done
        protocol.connection_made(self)
        if first:
            self._deliver(first)
        if not self._closing:
            self._loop.add_reader(fd, self._read_ready)

    def _deliver(self, data: bytes) -> None:
        """Hand bytes already read to the protocol, through its own buffer if it is a BufferedProtocol."""
        protocol = self._protocol
        if isinstance(protocol, asyncio.Protocol):
            protocol.data_received(data)
            return
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]

    def _read_ready(self) -> None:
        try:
            data = os.read(self._fd, STREAM_LIMIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(None if _host_gone(exc) else exc)
            return
        if not data:
            self._protocol.eof_received()
            self._finish(None)
            return
        self._deliver(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._buffer:
            try:
                sent = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._finish(exc)
                return
            data = memoryview(data)[sent:]
            if not data:
                return
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer += data
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        try:
            sent = os.write(self._fd, self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        del self._buffer[:sent]
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._finish(None)

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; finish once what is buffered has been written."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._finish(None)

    def abort(self) -> None:
        self._finish(None)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = _SERIAL_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def _finish(self, exc: Exception | None) -> None:
        if self._finished:
            return
        self._finished = True
        self._closing = True
        self._buffer.clear()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        os.close(self._fd)
        self._loop.call_soon(self._protocol.connection_lost, exc)
        self._loop.call_soon(self._signal_done)

    def _signal_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class SerialListener(asyncio.Server):
    """Serve a serial port (``serial:///dev/vport0p1``): one connection at a time, each lasting as long as
    the host end stays open; the port is opened again for the next one.

    An asyncio.Server with no sockets, so the ttrpc server and stop_listener treat it like any listener;
    every method they use is its own."""

    def __init__(self, address: Address, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        loop = asyncio.get_running_loop()
        # (loop, sockets, protocol_factory, ssl_context, backlog, ssl_handshake_timeout): no sockets here.
        super().__init__(loop, [], protocol_factory, None, 0, None)
        self._address = address
        self._factory = protocol_factory
        self._event_loop = loop
        # Opened now so that a port that cannot be opened at all fails here, with the address in the message.
        self._task = loop.create_task(self._serve(self._open_port()))

    def _open_port(self) -> int:
        try:
            return os.open(self._address.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise TransportError(f"{self._address}: cannot open the port: {exc.strerror or exc}") from exc

    async def _host_connected(self, fd: int) -> bytes:
        """Wait (polling) until the host end is open; return what it already sent."""
        while True:
            try:
                data = os.read(fd, STREAM_LIMIT)
            except (BlockingIOError, InterruptedError):
                return b""  # open, nothing sent yet
            except OSError as exc:
                if not _host_gone(exc):
                    raise
                data = b""
            if data:
                return data
            await asyncio.sleep(SERIAL_POLL)

    async def _serve(self, fd: int) -> None:
        try:
            await self._serve_port(fd)
        except Exception:
            _log.exception("%s: serving the port failed; no longer serving it", self._address)

    async def _serve_port(self, fd: int) -> None:
        while True:
            try:
                first = await self._host_connected(fd)
            except BaseException:
                os.close(fd)
                raise
            done: asyncio.Future[None] = self._event_loop.create_future()
            _SerialTransport(fd, self._factory(), self._address, first, done)
            await asyncio.shield(done)  # close() cancels this wait, never the connection
            try:
                fd = self._open_port()
            except TransportError as exc:  # the port went away (unplugged; a test's pseudo-terminal)
                _log.warning("%s; no longer serving it", exc)
                return

    def close(self) -> None:
        """Stop waiting for the host; the connection being served, if any, goes on until it ends."""
        self._task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def is_serving(self) -> bool:
        return not self._task.done()

    async def start_serving(self) -> None:
        """Serving starts when the listener is made; nothing to do."""

    async def serve_forever(self) -> None:
        await self._task

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return ()
