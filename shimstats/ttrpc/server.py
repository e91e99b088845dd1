"""asyncio ttrpc server for unary calls, answering errors the way containerd's Go server does.

Each connection is a Channel (bytes → frames) and a ServerConnection (``connection.py``: the rules, which
decide what each frame means). Handlers get raw payload bytes and return raw bytes; decoding the
method's messages is the service layer's job. A handler is either a plain function, called at once in the
callback that decoded its request (no task, no extra turn of the event loop: the cheapest path, for
handlers that never wait), or a coroutine function, whose call runs as its own task, so many calls on one
connection proceed at once and a deadline can cancel it. A plain function may also return a Later
(``later.py``) and settle it from a callback: no task, and the answer leaves in the turn it is given. Every
response frame goes out in one write, so frames never interleave.

Where we differ from Go on purpose:
* a response over 4 MiB is answered with RESOURCE_EXHAUSTED on its stream (Go drops the whole connection);
* connections and in-flight requests per connection are capped; over a cap a request gets
  RESOURCE_EXHAUSTED. A peer that does not read our answers stops being read (bounded buffers).
  Connections whose peer has already hung up do not count: at the cap, before refusing one, we look for
  such connections (a burst of connects that were dropped while we were not accepting leaves hundreds of
  them queued, their EOF not yet read) and let them go, so the caller behind the burst is served.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, Union, cast

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.channel import Channel
from shimstats.ttrpc.connection import Reply, ServerConnection, StartCall, status_frame
from shimstats.ttrpc.framing import Event, ProtocolError
from shimstats.ttrpc.later import Later, Outcome
from shimstats.ttrpc.listen import adopt_listener, create_listener, stop_listener
from shimstats.ttrpc.peer import Peer, describe_peer
from shimstats.ttrpc.server_common import (
    HUNG_UP_QUIET,
    REJECT_WINDOW,
    SHUTTING_DOWN,
    CallContext,
    hung_up,
    too_many_connections,
)
from shimstats.ttrpc.status import Code, TtrpcError, make_status

__all__ = ["CallContext", "Handler", "Server"]

log = logging.getLogger("shimstats.ttrpc")

Handler = Callable[[bytes, CallContext], Union[Awaitable[bytes], bytes, Later]]
"""A plain function returning bytes runs inline (it must not block: it holds the event loop, and no deadline
can interrupt it); a coroutine function runs as a task that the call's deadline cancels; a plain function
returning a Later answers when it settles it, or is cancelled at its deadline unless the Later is bounded."""


class _Method(NamedTuple):
    """A registered handler and how it runs: ``waits`` (a coroutine function) gets a task per call."""

    handler: Handler
    waits: bool


def _method(handler: Handler) -> _Method:
    call = type(handler).__call__  # an object whose __call__ is a coroutine function waits too
    return _Method(handler, inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call))


def _uncancel() -> None:
    """Undo the cancel request our deadline timer made, so the task can go on to send the answer."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):  # Python 3.11+; older asyncio keeps no count
        task.uncancel()


class _Connection:
    """One accepted connection: carry out what its ServerConnection decides, running each call as a task."""

    def __init__(self, server: Server, channel: Channel | None = None) -> None:
        """A new connection, or one taking over the open ``channel`` of a rejection that found room."""
        self.server = server
        self.loop = asyncio.get_running_loop()
        if channel is None:
            channel = Channel(self.on_event, self.on_close, on_open=self.on_open, backpressure=True)
        else:
            channel.rebind(self.on_event, self.on_close, backpressure=True)
        self.channel = channel
        self.rules: ServerConnection[_Method] = ServerConnection(
            server.services, max_in_flight=server.max_in_flight
        )
        self.calls: dict[int, asyncio.Task[None] | Later] = {}
        self.expired: set[int] = set()  # calls whose deadline timer cancelled them
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.peer = Peer(address="")
        if channel.started:
            self.on_open()

    def on_open(self) -> None:
        self.peer = describe_peer(self.channel)

    def on_event(self, event: Event) -> None:
        now = self.loop.time()
        action = self.rules.receive(event, now)
        if action is None:
            return
        if isinstance(action, Reply):
            self.channel.write(action.data)
            return
        stream_id = action.stream_id
        if action.deadline is not None:
            early = self.rules.expired_at_start(action, now)
            if early is not None:
                self.channel.write(early)
                self.ended(stream_id)
                return
        context = CallContext(
            action.service, action.method, stream_id, action.metadata, action.deadline, self.peer
        )
        handler, waits = action.handler
        if waits:  # a coroutine may wait, so it gets a task, and a deadline that cancels it
            self.calls[stream_id] = self.loop.create_task(self.call(action, context))
            return
        try:
            result = handler(action.payload, context)
        except Exception as exc:
            frame = self.failed(action, exc)
        else:
            if not isinstance(result, bytes):
                if isinstance(result, Later):
                    self.later(action, result)
                else:  # a plain function that handed back an awaitable
                    self.calls[stream_id] = self.loop.create_task(self.call(action, context, result))
                return
            frame = self.rules.answer(action, result)
        self.channel.write(frame)
        self.ended(stream_id)

    def later(self, call: StartCall[_Method], later: Later) -> None:
        """Answer when the handler settles ``later``; a timer at the deadline only if it is not bounded."""
        self.calls[call.stream_id] = later
        timer = None
        if call.deadline is not None and not later.bounded:
            timer = self.loop.call_at(call.deadline, self.later_expired, call, later)
        later.listen(functools.partial(self.settled, call, timer))

    def settled(self, call: StartCall[_Method], timer: asyncio.TimerHandle | None, outcome: Outcome) -> None:
        if timer is not None:
            timer.cancel()
        if isinstance(outcome, bytes):
            self.channel.write(self.rules.answer(call, outcome))
        else:
            self.channel.write(self.failed(call, outcome))
        self.finished(call.stream_id)

    def later_expired(self, call: StartCall[_Method], later: Later) -> None:
        if not later.settled:
            later.cancel()
            self.channel.write(self.rules.answer_expired(call))
            self.finished(call.stream_id)

    def failed(self, call: StartCall[_Method], exc: Exception) -> bytes:
        """The answer for a handler that raised; anything but a TtrpcError is a bug worth a traceback."""
        if not isinstance(exc, TtrpcError):  # exc_info given: a Later's failure arrives outside any except
            where = self.peer.address
            log.error("ttrpc %s/%s from %s failed", call.service, call.method, where, exc_info=exc)
        return self.rules.answer_error(call, exc)

    async def call(
        self, call: StartCall[_Method], context: CallContext, running: Awaitable[bytes] | None = None
    ) -> None:
        stream_id = call.stream_id
        timer = None
        if call.deadline is not None:
            # A timer that cancels this task: cheaper than a cancel scope, and we know who cancelled.
            timer = self.loop.call_at(call.deadline, self.expire, stream_id)
        try:
            try:
                try:
                    # A coroutine function's call is an awaitable; Laters come only from plain functions.
                    answer = running if running is not None else call.handler.handler(call.payload, context)
                    answer = cast(Union[Awaitable[bytes], bytes], answer)
                    frame = self.rules.answer(call, answer if isinstance(answer, bytes) else await answer)
                except asyncio.CancelledError:
                    if stream_id not in self.expired or self.channel.closed:
                        raise  # the connection went away: nobody to answer
                    _uncancel()
                    frame = self.rules.answer_expired(call)
            except Exception as exc:
                frame = self.failed(call, exc)
            finally:
                if timer is not None:
                    timer.cancel()
                    self.expired.discard(stream_id)
            self.channel.write(frame)
        finally:
            self.finished(stream_id)  # here rather than a done callback: that would cost a loop turn per call

    def expire(self, stream_id: int) -> None:
        task = self.calls.get(stream_id)
        if isinstance(task, asyncio.Task):
            self.expired.add(stream_id)
            task.cancel()

    def finished(self, stream_id: int) -> None:
        """A call's task is done (answered, failed or cancelled); once per call, whoever reports it first."""
        if self.calls.pop(stream_id, None) is not None:
            self.ended(stream_id)

    def task_done(self, stream_id: int, task: asyncio.Task[None]) -> None:
        self.finished(stream_id)

    def ended(self, stream_id: int) -> None:
        close_now = self.rules.call_ended(stream_id)
        if self.calls:
            return
        if self.channel.closed:
            self._set_done()
        elif close_now:
            self.channel.close()

    def on_close(self, reason: BaseException | None) -> None:
        if isinstance(reason, ProtocolError):
            log.warning("ttrpc %s: %s; closed this connection", self.peer.address, reason)
        elif reason is not None:
            log.debug("ttrpc %s: connection ended: %s", self.peer.address, reason)
        self.server._forget(self)
        if not self.calls:
            self._set_done()
        for stream_id, task in list(self.calls.items()):
            if isinstance(task, Later):
                task.cancel()
                self.finished(stream_id)
                continue
            # Nobody is left to answer; done is set when the last one has unwound. A task cancelled before
            # its first step never runs its body (nor the finished() in it), so the task reports its end.
            task.add_done_callback(functools.partial(self.task_done, stream_id))
            task.cancel()

    def _set_done(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def drain(self) -> None:
        """Graceful close: refuse new requests, hang up once the running ones have answered."""
        if self.rules.drain():
            self.channel.close()


class _Rejection:
    """A connection we will not serve: answer its first request with RESOURCE_EXHAUSTED, then hang up."""

    def __init__(self, server: Server, message: str) -> None:
        self.server = server
        self.message = message
        self.answered = False
        self.channel = Channel(self.on_event, self.on_close, on_open=self.on_open)
        self.timer: asyncio.TimerHandle | None = None
        server._rejecting += 1

    def on_open(self) -> None:
        if self.server._admit_late(self.channel):
            self.server._rejecting -= 1  # the channel is a served connection's now; on_close is not ours
            return
        if self.server._rejecting > self.server.max_connections:
            self.channel.close()  # even rejections are capped: no status, just a closed socket
        else:
            self.timer = asyncio.get_running_loop().call_later(REJECT_WINDOW, self.channel.close)

    def on_event(self, event: Event) -> None:
        if not self.answered:
            self.answered = True
            status = make_status(Code.RESOURCE_EXHAUSTED, self.message)
            self.channel.write(status_frame(event.stream_id, status))
            self.channel.close()

    def on_close(self, reason: BaseException | None) -> None:
        self.server._rejecting -= 1
        if self.timer is not None:
            self.timer.cancel()


class Server:
    """A ttrpc server: register services, then ``serve`` (blocks until ``close``) or ``start`` (returns)."""

    def __init__(self, *, max_connections: int = 256, max_in_flight: int = 1024) -> None:
        if max_connections < 1 or max_in_flight < 1:
            raise ValueError("max_connections and max_in_flight must be at least 1")
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.services: dict[str, Mapping[str, _Method]] = {}
        self._listeners: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._rejecting = 0
        self._no_hung_up_until = 0.0
        self._closing = False
        self._closed: asyncio.Event | None = None

    def register(self, service: str, methods: Mapping[str, Handler]) -> None:
        """Serve ``methods`` (name → handler) under a full service name, e.g. ``containerd.task.v2.Task``."""
        if service in self.services:
            raise ValueError(f"ttrpc service {service} is already registered")
        self.services[service] = {name: _method(handler) for name, handler in methods.items()}

    async def start(self, listener: Address | str | socket.socket, *, mode: int = 0o600) -> asyncio.Server:
        """Listen on an address (unix sockets get ``mode``), or serve a socket already bound and listening
        (one handed over by another process: the file stays the caller's to remove). Returns once
        accepting."""
        if self._closing:
            raise RuntimeError("ttrpc server is closed")
        if isinstance(listener, socket.socket):
            server = await adopt_listener(listener, self._new_connection)
        else:
            server = await create_listener(listener, self._new_connection, mode=mode)
        self._listeners.append(server)
        return server

    async def serve(self, listener: Address | str | socket.socket, *, mode: int = 0o600) -> None:
        """``start``, then return once ``close`` has finished; cancelling it closes at once (no grace)."""
        await self.start(listener, mode=mode)
        try:
            await self._closed_event().wait()
        except asyncio.CancelledError:
            await self.close(grace=0)
            raise

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    def _new_connection(self) -> Channel:
        """Protocol factory for listeners: a served connection, or a rejection when over a cap."""
        if self._closing:
            return _Rejection(self, SHUTTING_DOWN).channel
        if len(self._connections) >= self.max_connections:
            return _Rejection(self, too_many_connections(self.max_connections)).channel
        connection = _Connection(self)
        self._connections.add(connection)
        return connection.channel

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    def _admit_late(self, channel: Channel) -> bool:
        """Serve a connection refused at accept time after all, if letting hung-up ones go makes room.

        Called when the refused connection is attached: by then every connection accepted before it in the
        same burst is attached too, so the kernel can tell which of them the peer has already closed.
        """
        if self._closing:
            return False
        if len(self._connections) >= self.max_connections:
            self._let_go_of_hung_up()
        if len(self._connections) >= self.max_connections:
            return False
        self._connections.add(_Connection(self, channel))
        return True

    def _let_go_of_hung_up(self) -> None:
        """Close (and stop counting) every connection whose peer has hung up but whose EOF is unread."""
        now = asyncio.get_running_loop().time()
        if now < self._no_hung_up_until:
            return
        by_fd: dict[int, _Connection] = {}
        for connection in self._connections:
            sock = connection.channel.get_extra_info("socket")
            if sock is not None:
                by_fd[sock.fileno()] = connection
        gone = hung_up(by_fd)
        if not gone:
            self._no_hung_up_until = now + HUNG_UP_QUIET
        for fd in gone:
            connection = by_fd[fd]
            self._forget(connection)
            connection.channel.close()  # on_close follows, as for an EOF read the usual way

    @property
    def connection_count(self) -> int:
        """Connections being served now (rejected ones excluded)."""
        return len(self._connections)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls answer for up to ``grace`` seconds, cancel the rest, clean up."""
        self._closing = True
        for listener in self._listeners:
            listener.close()
        connections = list(self._connections)
        for connection in connections:
            connection.drain()
        pending = [connection.done for connection in connections]
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for connection in connections:
                if connection.done in late:
                    connection.channel.close()  # on_close cancels what is still running
            await asyncio.gather(*pending)
        for listener in self._listeners:
            await stop_listener(listener)
        self._listeners.clear()
        self._closed_event().set()
