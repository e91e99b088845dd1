"""A blocking ttrpc client: one call at a time on a plain socket, no event loop (and no asyncio import).

Scripts, the CLI, benchmarks and the proxy's threaded serving process use it; the rules (ids, matching,
failures, the stall rule) are a ClientConnection's (``connection.py``), shared with the asyncio Client.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import NoReturn

from shimstats.ttrpc.address import Address, parse_address
from shimstats.ttrpc.blocking_dial import dial
from shimstats.ttrpc.connection import STALLED, ClientConnection, Failed
from shimstats.ttrpc.framing import READ_CHUNK, FrameDecoder, Metadata, ProtocolError, metadata_pairs
from shimstats.ttrpc.status import Code, TtrpcError

__all__ = ["SyncClient"]

log = logging.getLogger("shimstats.ttrpc")


class SyncClient:
    """A blocking client for scripts, the CLI and benchmarks: one call at a time on a plain blocking socket.

    It dials every address kind with the same errors as Client (``blocking_dial``), then drives the same
    rules (``ClientConnection``, ``FrameDecoder``) with ``send`` and ``recv`` only: no event loop per call.
    Deadlines work as in Client: an expired call gives up its own stream (a late answer is dropped as
    stray) and the connection stays, unless the byte stream has been stuck inside one frame for the call's
    whole life. ``timeout`` is every call's default (None: such calls wait as long as the server takes)
    and bounds the dial unless ``connect_timeout`` is given. Not for use inside a running event loop.
    """

    def __init__(
        self, address: Address | str, timeout: float | None = 5.0, *, connect_timeout: float | None = None
    ) -> None:
        self.timeout = timeout
        addr = address if isinstance(address, Address) else parse_address(address)
        self.address = str(addr)
        self._sock = dial(addr, timeout if connect_timeout is None else connect_timeout)
        self._rules = ClientConnection(self.address)
        self._decoder = FrameDecoder()

    def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """Blocking ``Client.call``; ``timeout`` defaults to the one given at construction."""
        if timeout is None:
            timeout = self.timeout
        rules = self._rules
        request = rules.encode(service, method, payload, timeout=timeout, metadata=metadata_pairs(metadata))
        deadline = None if timeout is None else time.monotonic() + timeout
        outgoing = rules.send(request)
        stream_id = outgoing.stream_id
        frames_at_send = rules.frames
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(outgoing.data)
        except OSError as exc:  # TimeoutError too: a frame cut short leaves a byte stream nobody can read
            self._lost(exc)
        try:
            while True:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._sock.settimeout(remaining)
                data = self._sock.recv(READ_CHUNK)
                if not data:
                    self._decoder.eof()  # ProtocolError when the server hung up inside a frame
                    self._lost(None)
                for event in self._decoder.feed(data):
                    outcome = rules.receive(event)
                    if outcome is not None and outcome.stream_id == stream_id:
                        if isinstance(outcome, Failed):
                            raise outcome.error
                        return rules.result(service, method, outcome.payload)
        except TimeoutError:
            rules.give_up(stream_id)
            if rules.stalled(frames_at_send, mid_frame=self._decoder.pending > 0):
                log.warning(
                    "ttrpc connection to %s %s (%s/%s); closing it", self.address, STALLED, service, method
                )
                self._sock.close()
            assert timeout is not None  # no deadline, no TimeoutError
            raise TtrpcError(Code.DEADLINE_EXCEEDED, rules.expired_text(service, method, timeout)) from None
        except (OSError, ProtocolError) as exc:
            self._lost(exc)

    def _lost(self, reason: BaseException | None) -> NoReturn:
        """The connection is gone: close it and fail the call (and every later one) with UNAVAILABLE."""
        self._sock.close()
        self._rules.lost(reason)
        error = self._rules.error
        assert error is not None  # lost() always records why
        raise TtrpcError(error.code, error.message)

    def wait_closed(self) -> None:
        """Block until the server hangs up (for a connection kept open only to notice that), then count
        the connection as lost. Make no calls on it meanwhile."""
        self._sock.settimeout(None)
        try:
            while self._sock.recv(READ_CHUNK):
                pass  # a server does not talk unasked; whatever comes is dropped
        except OSError as exc:
            self._rules.lost(exc)
        else:
            self._rules.lost(None)
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed here or lost)."""
        return self._rules.error is not None

    def close(self) -> None:
        """Close the connection (idempotent); later calls fail with UNAVAILABLE."""
        self._rules.close()
        self._sock.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
