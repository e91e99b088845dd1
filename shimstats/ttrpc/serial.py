"""Serving a serial port (``serial:///dev/vport0p1``), how Kata 1.x reached its agent: the port is one byte
stream, served as one connection for as long as the host end is open. The host dials the unix socket the
VMM made for it (qemu ``-chardev socket``), so the host side is a plain ``unix://``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.transport import TransportError

__all__ = ["SERIAL_POLL", "SerialListener"]

_log = logging.getLogger("shimstats.ttrpc")

_READ_SIZE = 1 << 20  # bytes per read of the port

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
            data = os.read(self._fd, _READ_SIZE)
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
                data = os.read(fd, _READ_SIZE)
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
