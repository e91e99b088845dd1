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
from collections.abc import Callable
from types import TracebackType

from shimstats.ttrpc._deadline import wait_until
from shimstats.ttrpc.address import Address, parse_address
from shimstats.ttrpc.channel import Channel
from shimstats.ttrpc.connection import STALLED, Answered, ClientConnection, Failed
from shimstats.ttrpc.dial import create_connection
from shimstats.ttrpc.framing import Event, Metadata, metadata_pairs
from shimstats.ttrpc.status import Code, TtrpcError
from shimstats.ttrpc.sync_client import SyncClient

__all__ = ["Client", "SyncClient"]  # SyncClient lives in sync_client (no asyncio); kept importable here

log = logging.getLogger("shimstats.ttrpc")


class Client:
    """A ttrpc connection: ``await Client.connect(address)``.

    ``call`` raises TtrpcError for every failure of the call itself; ``connect`` raises TransportError (a
    ConnectionError) when the address cannot be reached and AddressError (a ValueError) for text that is no
    address. The rules (ids, matching, failures) are a ClientConnection's (``connection.py``); this class
    waits. Must be created inside a running event loop.
    """

    def __init__(self, *, address: str = "") -> None:
        self._loop = asyncio.get_running_loop()
        self._rules = ClientConnection(address)
        self._pending: dict[int, asyncio.Future[bytes] | _Waiter] = {}
        self._closed = self._loop.create_future()
        self._channel = Channel(self._on_event, self._on_close)
        self.address = address

    @classmethod
    async def connect(cls, address: Address | str, *, timeout: float | None = 5.0) -> Client:
        """Dial ``address`` (unix, vsock or hvsock) within ``timeout`` seconds."""
        addr = address if isinstance(address, Address) else parse_address(address)
        client = cls(address=str(addr))
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
        request = self._rules.encode(
            service, method, payload, timeout=timeout, metadata=metadata_pairs(metadata)
        )
        deadline = None if timeout is None else self._loop.time() + timeout
        return await self._exchange(request, service, method, deadline, timeout, None)

    async def call_until(
        self, service: str, method: str, payload: bytes, deadline: float, expired: str
    ) -> bytes:
        """One unary call (no metadata) that must end by ``deadline``, in ``loop.time()`` units: what is left
        of it travels as timeout_nano, and an answer still missing then is DEADLINE_EXCEEDED, ``expired``
        its message. For callers that keep one deadline over several steps, so that they need no timer of
        their own around this one."""
        timeout = deadline - self._loop.time()
        request = self._rules.encode(service, method, payload, timeout=timeout, metadata=())
        return await self._exchange(request, service, method, deadline, timeout, expired)

    def start_until(
        self,
        service: str,
        method: str,
        payload: bytes,
        deadline: float,
        expired: str,
        done: Callable[[bytes | TtrpcError], None],
    ) -> _Waiter:
        """call_until for a caller that waits in no task: ``done`` gets the response payload or the
        TtrpcError once, from the callback that settled the call (the answer read, the deadline's timer,
        the connection's loss), and nothing after ``cancel()`` of what this returns. A call that cannot be
        sent raises TtrpcError at once instead (the connection closed, the deadline passed). Nothing waits
        for the write: check ``write_blocked`` first."""
        timeout = deadline - self._loop.time()
        request = self._rules.encode(service, method, payload, timeout=timeout, metadata=())
        outgoing = self._rules.send(request)
        waiter = _Waiter(self, outgoing.stream_id, service, method, expired, done)
        self._pending[outgoing.stream_id] = waiter
        self._channel.write(outgoing.data)
        waiter.frames_at_send = self._rules.frames
        waiter.timer = self._loop.call_at(deadline, waiter.expire)
        return waiter

    @property
    def write_blocked(self) -> bool:
        """True while the server is not reading our requests (a call then waits before it is sent)."""
        return self._channel.write_blocked

    async def _writable(self) -> None:
        """Wait while the server is not reading our requests (rare: only under a flood)."""
        while self._channel.write_blocked and self._rules.error is None:
            try:
                await self._channel.drain()
            except OSError:
                return  # the close callback has recorded the loss

    async def _exchange(
        self,
        request: bytes,
        service: str,
        method: str,
        deadline: float | None,
        timeout: float | None,
        expired: str | None,
    ) -> bytes:
        """Send an encoded Request and wait for its answer until ``deadline`` (``expired`` None: the
        message names the ``timeout``)."""
        if self._channel.write_blocked:
            if deadline is None or timeout is None:
                await self._writable()
            else:
                message = self._rules.expired_text(service, method, timeout) if expired is None else expired
                await wait_until(self._writable(), deadline, message)
        # No await from taking the id to writing the frame: ids reach the wire in order.
        outgoing = self._rules.send(request)
        stream_id = outgoing.stream_id
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending[stream_id] = future
        self._channel.write(outgoing.data)
        frames_at_send = self._rules.frames
        # A plain timer failing the future is the cheapest local deadline (no cancel scope around the await).
        timer = None
        if deadline is not None and timeout is not None:
            timer = self._loop.call_at(deadline, self._expire, future, service, method, timeout, expired)
        try:
            data = await future
        finally:
            self._forget(stream_id)
            if timer is not None:
                timer.cancel()
            # Expired (by our timer, or by a caller's scope cancelling us at the same deadline): that
            # stream alone is given up, unless the byte stream has not moved for this call's whole life.
            late = deadline is not None and not _answered(future) and self._loop.time() >= deadline
            if late:
                self._close_if_stalled(frames_at_send, service, method)
        return self._rules.result(service, method, data)

    def _close_if_stalled(self, frames_at_send: int, service: str, method: str) -> None:
        """After a call expired: close the connection if its byte stream has not moved since it was sent."""
        if self._rules.stalled(frames_at_send, mid_frame=self._channel.mid_frame):
            log.warning(
                "ttrpc connection to %s %s (%s/%s); closing it", self.address, STALLED, service, method
            )
            self._channel.close()

    def _forget(self, stream_id: int) -> None:
        """A call stopped waiting: a late answer for it will be dropped as stray."""
        self._pending.pop(stream_id, None)
        self._rules.give_up(stream_id)

    def _expire(
        self, future: asyncio.Future[bytes], service: str, method: str, timeout: float, expired: str | None
    ) -> None:
        if not future.done():
            message = self._rules.expired_text(service, method, timeout) if expired is None else expired
            future.set_exception(TtrpcError(Code.DEADLINE_EXCEEDED, message))

    def _settle(self, outcome: Answered | Failed) -> None:
        future = self._pending.pop(outcome.stream_id, None)
        if future is None or future.done():
            return
        if isinstance(outcome, Answered):
            future.set_result(outcome.payload)
        else:
            future.set_exception(outcome.error)

    def _on_event(self, event: Event) -> None:
        outcome = self._rules.receive(event)
        if outcome is not None:
            self._settle(outcome)

    def _on_close(self, reason: BaseException | None) -> None:
        for failure in self._rules.lost(reason):
            self._settle(failure)
        if not self._closed.done():
            self._closed.set_result(None)

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed here or lost); calls then fail with UNAVAILABLE."""
        return self._rules.error is not None

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with UNAVAILABLE."""
        self._rules.close()
        self._channel.close()
        if self._channel.started:
            await self._closed

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class _Waiter:
    """A call answered through a callback (``Client.start_until``). Has what ``_settle`` uses of a Future
    (done, set_result, set_exception), but calls back at once rather than in the next loop turn."""

    __slots__ = (
        "_client",
        "_done",
        "_finished",
        "expired",
        "frames_at_send",
        "method",
        "service",
        "stream_id",
        "timer",
    )

    def __init__(
        self,
        client: Client,
        stream_id: int,
        service: str,
        method: str,
        expired: str,
        done: Callable[[bytes | TtrpcError], None],
    ) -> None:
        self._client = client
        self._done = done
        self._finished = False
        self.stream_id = stream_id
        self.service = service
        self.method = method
        self.expired = expired
        self.frames_at_send = 0
        self.timer: asyncio.TimerHandle | None = None

    def done(self) -> bool:
        return self._finished

    def set_result(self, payload: bytes) -> None:
        """The Response envelope arrived: its payload, or the status it carries, goes to the callback."""
        if self._end():
            try:
                result: bytes | TtrpcError = self._client._rules.result(self.service, self.method, payload)
            except TtrpcError as exc:
                result = exc
            self._done(result)

    def set_exception(self, error: TtrpcError) -> None:
        if self._end():
            self._done(error)

    def expire(self) -> None:
        """The deadline's timer: DEADLINE_EXCEEDED, and the connection closed if it is stuck mid-frame."""
        if self._end():
            self._client._close_if_stalled(self.frames_at_send, self.service, self.method)
            self._done(TtrpcError(Code.DEADLINE_EXCEEDED, self.expired))

    def cancel(self) -> None:
        """Nobody waits for the answer any more: no callback."""
        self._end()

    def _end(self) -> bool:
        """Forget the call (True the first time only)."""
        if self._finished:
            return False
        self._finished = True
        self._client._forget(self.stream_id)
        if self.timer is not None:
            self.timer.cancel()
        return True


def _answered(future: asyncio.Future[bytes]) -> bool:
    """True when the peer's response reached this call (a result, not an expiry or a lost connection)."""
    return future.done() and not future.cancelled() and future.exception() is None
