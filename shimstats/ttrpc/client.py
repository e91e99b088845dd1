"""asyncio ttrpc client: many concurrent unary calls multiplexed over one connection.

Stream ids are odd and increase from 1. Taking an id and writing its frame happen in one step with no await
in between, so ids reach the wire in order (Go's server rejects a smaller id) without a lock. Responses are
matched to waiting calls by stream id; when the connection goes, every waiting call fails at once with
UNAVAILABLE.

A deadline is one call's business, as in containerd's Go client: the expired call stops waiting, its stream
is forgotten (a late answer is dropped) and the connection stays for everyone else. The one exception is a
byte stream that is itself broken: if the connection has been stuck inside one frame for the expired call's
whole life (a header announcing more bytes than will ever come, junk being skipped), no later answer could
get through either, so the connection is closed and every waiting call fails with UNAVAILABLE at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from shimstats.ttrpc._deadline import wait_until
from shimstats.ttrpc.channel import Channel
from shimstats.ttrpc.framing import (
    MAX_STREAM_ID,
    Event,
    Frame,
    MessageType,
    Metadata,
    ProtocolError,
    decode_response,
    encode_frame,
    encode_request,
    metadata_pairs,
)
from shimstats.ttrpc.status import Code, TtrpcError, error_from_status
from shimstats.ttrpc.transport import Address, create_connection, parse_address

__all__ = ["Client", "SyncClient"]

log = logging.getLogger("shimstats.ttrpc")


class Client:
    """A ttrpc connection: ``await Client.connect(address)``, or ``Client(reader, writer)`` on open streams.

    ``call`` raises TtrpcError for every failure of the call itself; ``connect`` raises TransportError (a
    ConnectionError) when the address cannot be reached and AddressError (a ValueError) for text that is no
    address. Must be created inside a running event loop.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
        *,
        address: str = "",
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._frames = 0  # whole frames received: progress of the byte stream, for the stall check
        self._error: TtrpcError | None = None
        self._closed = self._loop.create_future()
        self._channel = Channel(self._on_event, self._on_close)
        self._pump: asyncio.Task[None] | None = None
        self.address = address
        if reader is not None and writer is not None:
            self.address = address or str(writer.get_extra_info("peername") or "ttrpc peer")
            self._pump = self._channel.start_streams(reader, writer)
        elif reader is not None or writer is not None:
            raise ValueError("Client needs both a reader and a writer (or neither, from Client.connect)")

    @classmethod
    async def connect(cls, address: Address | str, *, timeout: float | None = 5.0) -> Client:
        """Dial ``address`` (unix, vsock or hvsock) within ``timeout`` seconds."""
        addr = address if isinstance(address, Address) else parse_address(address)
        client = cls(None, None, address=str(addr))
        await create_connection(addr, lambda: client._channel, timeout)
        return client

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """One unary call: send ``payload`` to ``service/method`` and return the response payload bytes.

        ``timeout`` (seconds) travels as timeout_nano for the server and is enforced here as well.
        """
        pairs = metadata_pairs(metadata)
        deadline: float | None = None
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise TtrpcError(
                    Code.DEADLINE_EXCEEDED, f"{service}/{method}: timeout {timeout:g}s is not positive"
                )
            deadline = self._loop.time() + timeout
            timeout_nano = int(timeout * 1e9)
        request = encode_request(service, method, payload, timeout_nano=timeout_nano, metadata=pairs)
        if self._channel.write_blocked:
            if timeout is None:
                await self._writable()
            else:
                await wait_until(self._writable(), deadline, self._expired_text(service, method, timeout))
        data = await self._roundtrip(request, deadline, service, method, timeout)
        try:
            response = decode_response(data)
        except ProtocolError as exc:
            raise TtrpcError(Code.INTERNAL, f"{service}/{method} from {self.address}: {exc}") from None
        error = error_from_status(response.status)
        if error is not None:
            raise error
        return response.payload

    async def _writable(self) -> None:
        """Wait while the server is not reading our requests (rare: only under a flood)."""
        while self._channel.write_blocked and self._error is None:
            try:
                await self._channel.drain()
            except OSError:
                return  # the close callback has set _error

    async def _roundtrip(
        self, request: bytes, deadline: float | None, service: str, method: str, timeout: float | None
    ) -> bytes:
        if self._error is not None:
            raise TtrpcError(self._error.code, self._error.message)
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise TtrpcError(Code.RESOURCE_EXHAUSTED, f"{self.address}: stream ids used up")
        frame = encode_frame(stream_id, MessageType.REQUEST, 0, request)
        # No await from taking the id to writing the frame: ids reach the wire in order.
        self._next_id = stream_id + 2
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[stream_id] = future
        self._channel.write(frame)
        frames_at_send = self._frames
        # A plain timer failing the future is the cheapest local deadline (no cancel scope around the await).
        timer = None
        if deadline is not None and timeout is not None:
            timer = self._loop.call_at(deadline, self._expire, future, service, method, timeout)
        try:
            return await future
        finally:
            self._pending.pop(stream_id, None)
            if timer is not None:
                timer.cancel()
            # Expired (by our timer, or by a caller's scope cancelling us at the same deadline): that
            # stream alone is given up, unless the byte stream has not moved for this call's whole life.
            if deadline is not None and not _answered(future) and self._loop.time() >= deadline:
                self._close_if_stalled(frames_at_send, f"{service}/{method}")

    def _close_if_stalled(self, frames_at_send: int, call: str) -> None:
        """Close the connection if it has been stuck inside one frame since a now expired call was sent."""
        if self._error is not None or self._frames != frames_at_send or not self._channel.mid_frame:
            return
        why = "stuck inside a frame that never completed while a call's deadline passed"
        log.warning("ttrpc connection to %s %s (%s); closing it", self.address, why, call)
        self._error = TtrpcError(Code.UNAVAILABLE, f"ttrpc connection to {self.address} closed: {why}")
        self._channel.close()

    def _expired_text(self, service: str, method: str, timeout: float) -> str:
        return f"{service}/{method}: no answer from {self.address} within {timeout:g}s"

    def _expire(self, future: asyncio.Future[bytes], service: str, method: str, timeout: float) -> None:
        if not future.done():
            future.set_exception(
                TtrpcError(Code.DEADLINE_EXCEEDED, self._expired_text(service, method, timeout))
            )

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Frame):
            self._frames += 1
            if event.mtype == MessageType.RESPONSE:
                future = self._pending.pop(event.stream_id, None)
                if future is not None and not future.done():
                    future.set_result(event.payload)
            return  # Data or unknown types: unary calls have no use for them
        future = self._pending.pop(event.stream_id, None)
        if future is not None and not future.done():
            future.set_exception(
                TtrpcError(
                    Code.RESOURCE_EXHAUSTED,
                    f"{self.address}: response of {event.length} bytes is over the ttrpc limit",
                )
            )

    def _on_close(self, reason: BaseException | None) -> None:
        if self._error is None:
            why = (
                "the server closed the connection" if reason is None else str(reason) or type(reason).__name__
            )
            self._error = TtrpcError(Code.UNAVAILABLE, f"ttrpc connection to {self.address} lost: {why}")
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(TtrpcError(self._error.code, self._error.message))
        if not self._closed.done():
            self._closed.set_result(None)

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed here or lost); calls then fail with UNAVAILABLE."""
        return self._error is not None

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with UNAVAILABLE."""
        if self._error is None:
            self._error = TtrpcError(
                Code.UNAVAILABLE, f"ttrpc connection to {self.address} closed by the client"
            )
        self._channel.close()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
        elif self._channel.started:
            await self._closed

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _answered(future: asyncio.Future[bytes]) -> bool:
    """True when the peer's response reached this call (a result, not an expiry or a lost connection)."""
    return future.done() and not future.cancelled() and future.exception() is None


class SyncClient:
    """A blocking Client for scripts and the CLI: it runs its own event loop in the calling thread.

    Not for use from inside a running event loop (use Client there).
    """

    def __init__(self, address: Address | str, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._loop.run_until_complete(Client.connect(address, timeout=timeout))
        except BaseException:
            self._loop.close()
            raise

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
        return self._loop.run_until_complete(
            self._client.call(
                service,
                method,
                payload,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata,
            )
        )

    def close(self) -> None:
        """Close the connection and the private event loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._client.close())
        finally:
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
