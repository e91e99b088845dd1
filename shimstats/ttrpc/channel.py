"""One ttrpc connection's frame I/O: bytes from the socket become framing events, frames go out whole.

A Channel is an asyncio BufferedProtocol, so the event loop reads straight into one reused buffer and calls
us back (no reader task in between, and no fresh 256 KiB allocation per read, which the plain Protocol path
pays on every recv). Client and server both sit on it; it knows nothing about requests.

Every frame is written with a single ``transport.write`` call, which the event loop never splits or
interleaves with another write, so concurrent senders need no lock to keep frames intact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Optional, cast

from shimstats.ttrpc.framing import READ_CHUNK, Event, FrameDecoder, ProtocolError

__all__ = ["READ_CHUNK", "Channel"]

log = logging.getLogger("shimstats.ttrpc")


OnEvent = Callable[[Event], None]
OnClose = Callable[[Optional[BaseException]], None]
OnOpen = Callable[[], None]


class Channel(asyncio.BufferedProtocol):
    """Frames over one byte stream.

    ``on_open`` runs once the transport is attached; ``on_event`` gets every decoded event, in order;
    ``on_close`` runs exactly once with the reason the connection ended: None for a clean close,
    ProtocolError for a truncated frame, else an OSError. With ``backpressure`` set (servers), reading
    stops while the peer is not reading what we write, so a peer that floods requests without reading the
    answers cannot make us buffer without bound.
    """

    def __init__(
        self,
        on_event: OnEvent,
        on_close: OnClose,
        *,
        on_open: OnOpen | None = None,
        backpressure: bool = False,
    ) -> None:
        self._on_event = on_event
        self._on_close = on_close
        self._on_open = on_open
        self._backpressure = backpressure
        self._decoder = FrameDecoder()
        self._buffer = memoryview(bytearray(READ_CHUNK))
        self._transport: asyncio.WriteTransport | None = None
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._error: BaseException | None = None
        self._closed = False

    def rebind(self, on_event: OnEvent, on_close: OnClose, *, backpressure: bool) -> None:
        """Give this open channel to a new owner: later events and the close go to it."""
        self._on_event = on_event
        self._on_close = on_close
        self._backpressure = backpressure

    # -- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports write like asyncio's but are not subclasses of asyncio.WriteTransport.
        self._transport = cast(asyncio.WriteTransport, transport)
        if self._on_open is not None:
            self._on_open()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Decode ``data`` and hand each event on."""
        try:
            for event in self._decoder.feed(data):
                self._on_event(event)
        except Exception as exc:  # a bug above us must not leave the connection half-alive
            log.exception("ttrpc: handling incoming frames failed; closing the connection")
            self._error = exc
            self.close()

    def eof_received(self) -> bool | None:
        try:
            self._decoder.eof()
        except ProtocolError as exc:
            self._error = exc
        return None  # close our side too: ttrpc has no half-closed use

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_drainers()
        self._on_close(self._error or exc)

    def pause_writing(self) -> None:
        self._paused = True
        if self._backpressure and self._transport is not None:
            self._transport.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self._paused = False
        if self._backpressure and self._transport is not None:
            self._transport.resume_reading()  # type: ignore[attr-defined]
        self._wake_drainers()

    # -- sending ---------------------------------------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        """Queue one whole frame; dropped silently once the connection is closing."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    @property
    def write_blocked(self) -> bool:
        """True while the peer is not keeping up; callers that can wait should ``await drain()``."""
        return self._paused

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark; ConnectionResetError once closed."""
        if self._closed:
            raise ConnectionResetError("connection lost")
        if self._paused:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if self._closed:
                    waiter.set_exception(ConnectionResetError("connection lost"))
                else:
                    waiter.set_result(None)

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once a transport is attached."""
        return self._transport is not None

    @property
    def closed(self) -> bool:
        """True once on_close has run."""
        return self._closed

    @property
    def mid_frame(self) -> bool:
        """True while bytes of an unfinished frame are held or an oversized body is being skipped."""
        return self._decoder.pending > 0

    def close(self) -> None:
        """Close the connection (data already written is still flushed); on_close follows."""
        if self._transport is not None:
            self._transport.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Transport details (``socket``, ``peername``...), as asyncio transports give them."""
        return default if self._transport is None else self._transport.get_extra_info(name, default)
