"""A ttrpc server on threads for unary calls: the asyncio Server's behaviour without importing asyncio.

The proxy shim's serving process runs one per pod, so its memory counts: asyncio alone costs it some 6 MB.
The rules are the same ServerConnection (``connection.py``) the asyncio server carries out, so the statuses
are the same; only the I/O differs:

* one accept thread; per connection one thread at a time holds the reader role: it reads, decodes frames
  and applies the rules. Calls run concurrently on threads of a pool that grows when all are busy and
  shrinks when idle, so a call that blocks for long (Task/Wait) holds up nobody else;
* the thread that read a request runs it itself, and hands the reader role on to an idle thread (or a new
  one) only if a frame or the end of the stream arrives meanwhile: a watcher thread waits in epoll on the
  connections whose reader runs a call (armed and disarmed by that reader, one epoll_ctl each). Handing
  every call to a worker would put a thread wake-up (tens of µs, 100 on a busy VM) and a GIL hand-over
  between the request and its answer; handing on the reader role at every request (plain leader/followers)
  puts it beside the call, but it still costs CPU and context switches. More requests from the same read
  each go to a thread of their own. docs/benchmarks.md ("Fourth pass") has the measurements;
* a frame goes out in one ``sendall`` under the connection's write lock, so frames never interleave. The
  reader takes that lock before each read: a peer that does not read our answers is not read either
  (bounded buffers), and one that does not read them for WRITE_STALL seconds is hung up on;
* the same caps as the asyncio server: connections (over it: RESOURCE_EXHAUSTED to the first request
  within REJECT_WINDOW, after letting hung-up connections go) and calls in flight per connection;
* deadlines: a call whose deadline passed before it started is refused; a thread cannot be cancelled, so
  a handler must honour ``ctx.deadline`` itself (pass it on as a timeout); an answer ready after the
  deadline becomes DEADLINE_EXCEEDED, as the asyncio server's timer would have made it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping

from shimstats.ttrpc.address import Address
from shimstats.ttrpc.bind import bound_socket, listen_backlog, unlink_if
from shimstats.ttrpc.connection import Reply, ServerConnection, StartCall, status_frame
from shimstats.ttrpc.framing import READ_CHUNK, FrameDecoder, ProtocolError
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
from shimstats.ttrpc.transport import TransportError, as_address

__all__ = ["WRITE_STALL", "SyncHandler", "ThreadServer"]

log = logging.getLogger("shimstats.ttrpc")

SyncHandler = Callable[[bytes, CallContext], bytes]
"""Runs on a worker thread; returns the response payload or raises (TtrpcError: that status)."""

WRITE_STALL = 10.0
"""Seconds a write may wait for a peer that does not read before the connection is closed."""
THREAD_IDLE = 30.0
"""Seconds an idle thread waits for a job before it ends."""


class _Threads:
    """The server's threads. A job goes to an idle thread, or to a new one when none is idle; a thread that
    had no job for ``idle`` seconds ends. Jobs are connections' reader roles and calls."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.count = 0  # threads alive, busy or idle

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1
                return
            self.count += 1
        threading.Thread(target=self._work, daemon=True, name="ttrpc").start()

    def _work(self) -> None:
        while True:  # the job that made this thread is in the queue like any other
            try:
                job = self._jobs.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._idle -= 1
                        self.count -= 1
                        return
                continue
            try:
                job()
            except Exception:  # a job reports its own failures; this is a last resort
                log.exception("ttrpc: a server thread's job failed")
            with self._lock:
                self._idle += 1


class _Served:
    """One accepted connection: its reader role passes from thread to thread (module doc: leader/followers).

    Exactly one thread holds the role at a time (it is handed on through the thread pool's queue), so the
    decoder needs no lock of its own; the rules and the closed flags are under ``lock``.
    """

    def __init__(self, server: ThreadServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        sock.settimeout(WRITE_STALL)
        self.rules: ServerConnection[SyncHandler] = ServerConnection(
            server.services, max_in_flight=server.max_in_flight
        )
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()  # the rules and the closed flags
        self.write_lock = threading.Lock()
        self.peer = Peer(address="")
        self.reading = True  # the reader role has not ended
        self.watched = False  # the role's holder runs a call; the watcher may hand the role on
        self.released = False  # the socket is closed
        self.done = threading.Event()  # no reader and no call left

    def start(self) -> None:
        self.server._threads.submit(self._first_read)

    def _first_read(self) -> None:
        self.peer = describe_peer(_SocketInfo(self.sock))
        self.lead()

    def lead(self) -> None:
        """The reader role: read until a request is to run and run it here, handing the role on to another
        thread only if something arrives meanwhile (more requests from the same read each go to a thread
        of their own). Returns when the role went elsewhere or ended (the thread goes back to the pool)."""
        threads = self.server._threads
        while True:
            calls, reading_on = self._read_calls()
            for call in calls[1:]:
                threads.submit(functools.partial(self.run, call))
            if not reading_on:
                if calls:
                    self.run(calls[0])
                return
            if not self._run_watched(calls[0]):
                return

    def _run_watched(self, call: StartCall[SyncHandler]) -> bool:
        """Run ``call`` while the watcher hands the reader role on if a frame or the end arrives; True when
        this thread still holds the role afterwards."""
        with self.lock:
            self.watched = True
        watcher = self.server._watcher
        watcher.watch(self)
        frame = self.answer(call)
        with self.lock:
            kept, self.watched = self.watched, False
        if kept:
            watcher.unwatch(self)  # before the answer goes out: the peer's next request is ours to read
        self.write(frame)
        self.ended(call.stream_id)
        return kept

    def hand_on(self) -> None:
        """From the watcher: something arrived while the role's holder runs a call; another thread reads."""
        with self.lock:
            if not self.watched:
                return
            self.watched = False
        self.server._threads.submit(self.lead)

    def _read_calls(self) -> tuple[list[StartCall[SyncHandler]], bool]:
        """Read and apply the rules until some call is to run: (the calls, whether reading goes on). The
        end of the stream (EOF, an error) ends the reader role here, after the calls read before it."""
        calls: list[StartCall[SyncHandler]] = []
        reason: BaseException | None = None
        try:
            while True:
                with self.write_lock:  # no reading while an answer cannot be written
                    pass
                try:
                    data = self.sock.recv(READ_CHUNK)
                except TimeoutError:
                    continue  # an idle peer: the timeout is for writes
                if not data:
                    self.decoder.eof()
                    break
                for event in self.decoder.feed(data):
                    with self.lock:
                        action = self.rules.receive(event, time.monotonic())
                    if action is None:
                        continue
                    if isinstance(action, Reply):
                        self.write(action.data)
                    elif self._may_start(action):
                        calls.append(action)
                if calls:
                    return calls, True
        except (OSError, ProtocolError) as exc:
            reason = exc
        except Exception as exc:  # a bug above us must not leave the connection half-alive
            log.exception("ttrpc: handling incoming frames failed; closing the connection")
            reason = exc
        if isinstance(reason, ProtocolError):
            log.warning("ttrpc %s: %s; closed this connection", self.peer.address, reason)
        elif reason is not None:
            log.debug("ttrpc %s: connection ended: %s", self.peer.address, reason)
        self.server._forget(self)
        with self.lock:
            self.reading = False
            self._release_if_idle()
        return calls, False

    def _may_start(self, call: StartCall[SyncHandler]) -> bool:
        """False (and answered) when the call's deadline passed before it could start."""
        early = self.rules.expired_at_start(call, time.monotonic())
        if early is None:
            return True
        self.write(early)
        self.ended(call.stream_id)
        return False

    def run(self, call: StartCall[SyncHandler]) -> None:
        self.write(self.answer(call))
        self.ended(call.stream_id)

    def answer(self, call: StartCall[SyncHandler]) -> bytes:
        """Run the handler; the frame to send (its result, its error's status, or DEADLINE_EXCEEDED)."""
        context = CallContext(
            call.service, call.method, call.stream_id, call.metadata, call.deadline, self.peer
        )
        try:
            result = call.handler(call.payload, context)
        except Exception as exc:
            if not isinstance(exc, TtrpcError):
                log.exception("ttrpc %s/%s from %s failed", call.service, call.method, self.peer.address)
            frame = self.rules.answer_error(call, exc)
        else:
            if call.deadline is not None and time.monotonic() >= call.deadline:
                frame = self.rules.answer_expired(call)
            else:
                frame = self.rules.answer(call, result)
        return frame

    def write(self, frame: bytes) -> None:
        """Send one whole frame; a peer that is gone or stopped reading loses its connection."""
        with self.write_lock:
            if self.released:
                return
            try:
                self.sock.sendall(frame)
            except OSError as exc:  # TimeoutError too: a frame cut short leaves a stream nobody can read
                log.debug("ttrpc %s: cannot answer (%s); closing", self.peer.address, exc)
                self.hang_up()

    def ended(self, stream_id: int) -> None:
        with self.lock:
            close_now = self.rules.call_ended(stream_id)
            if close_now:
                self.hang_up()
            self._release_if_idle()

    def _release_if_idle(self) -> None:
        """With ``lock`` held: close the socket once neither the reader nor any call can use it."""
        if self.reading or self.rules.active or self.released:
            return
        self.released = True
        self.server._watcher.forget(self)
        self.sock.close()
        self.done.set()

    def hang_up(self) -> None:
        """Make the reader see the end (the socket is closed once nothing uses it)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def drain(self) -> None:
        """Graceful close: refuse new requests, hang up once the running ones have answered."""
        with self.lock:
            if self.rules.drain():
                self.hang_up()


class _Watcher:
    """One thread in epoll_wait over the connections whose reader runs a call: a frame or the end arriving
    on one hands its reader role on. Arming and disarming are one epoll_ctl each from the reader's thread
    (an epoll set can change under a thread waiting on it), so a lone caller never wakes this thread."""

    _ARMED = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoll: select.epoll | None = None
        self._wake_fd = -1  # written to by close
        self._served: dict[int, _Served] = {}  # by fd

    def watch(self, served: _Served) -> None:
        fd = served.sock.fileno()
        with self._lock:
            if self._epoll is None:
                self._start()
            assert self._epoll is not None
            known = self._served.get(fd) is served
            self._served[fd] = served
        if known:
            self._epoll.modify(fd, self._ARMED)
        else:
            self._epoll.register(fd, self._ARMED)

    def unwatch(self, served: _Served) -> None:
        if self._epoll is not None:
            self._epoll.modify(served.sock.fileno(), select.EPOLLONESHOT)  # registered, reporting nothing

    def forget(self, served: _Served) -> None:
        """Before ``served``'s socket closes (its fd number may be reused)."""
        fd = served.sock.fileno()
        with self._lock:
            if self._served.get(fd) is not served:
                return
            del self._served[fd]
            assert self._epoll is not None
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _start(self) -> None:
        """With ``_lock`` held: the epoll set and its thread, made on first use."""
        self._epoll = select.epoll()
        read_fd, self._wake_fd = os.pipe()
        self._epoll.register(read_fd, select.EPOLLIN)
        thread = threading.Thread(target=self._run, args=(self._epoll, read_fd), daemon=True)
        thread.name = "ttrpc-watch"
        thread.start()

    def _run(self, epoll: select.epoll, wake_fd: int) -> None:
        try:
            while True:
                for fd, _ in epoll.poll():
                    if fd == wake_fd:
                        return
                    served = self._served.get(fd)
                    if served is not None:
                        served.hand_on()
        finally:
            epoll.close()
            os.close(wake_fd)

    def close(self) -> None:
        """End the watching thread (the server closes)."""
        with self._lock:
            if self._wake_fd >= 0:
                os.write(self._wake_fd, b"x")
                os.close(self._wake_fd)
                self._wake_fd = -1


class _SocketInfo:
    """A socket shaped like a transport for ``describe_peer``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" else default


def _request_waiting(sock: socket.socket) -> bool:
    """Whether the peer sent something (or hung up) within the reject window."""
    try:
        readable, _, _ = select.select([sock], [], [], REJECT_WINDOW)
    except (OSError, ValueError):
        return False
    return bool(readable)


def _reject(sock: socket.socket, message: str) -> None:
    """Answer the first request of a connection we will not serve with RESOURCE_EXHAUSTED, then hang up."""
    decoder = FrameDecoder()
    deadline = time.monotonic() + REJECT_WINDOW
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(READ_CHUNK)
            if not data:
                return
            for event in decoder.feed(data):
                status = make_status(Code.RESOURCE_EXHAUSTED, message)
                sock.sendall(status_frame(event.stream_id, status))
                return
    except (OSError, ProtocolError):
        return
    finally:
        sock.close()


class ThreadServer:
    """A ttrpc server on threads: ``register`` services, ``start`` (returns once accepting), ``close``."""

    def __init__(
        self, *, max_connections: int = 256, max_in_flight: int = 1024, thread_idle: float = THREAD_IDLE
    ) -> None:
        if max_connections < 1 or max_in_flight < 1:
            raise ValueError("max_connections and max_in_flight must be at least 1")
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.services: dict[str, Mapping[str, SyncHandler]] = {}
        self._threads = _Threads(thread_idle)
        self._watcher = _Watcher()
        self._lock = threading.Lock()
        self._connections: dict[int, _Served] = {}  # by fd
        self._rejecting = 0
        self._no_hung_up_until = 0.0
        self._closing = False
        self._listeners: list[tuple[socket.socket, threading.Thread, str, int | None]] = []

    def register(self, service: str, methods: Mapping[str, SyncHandler]) -> None:
        """Serve ``methods`` (name → handler) under a full service name, e.g. ``containerd.task.v2.Task``."""
        if service in self.services:
            raise ValueError(f"ttrpc service {service} is already registered")
        self.services[service] = dict(methods)

    def start(self, listener: Address | str | socket.socket, *, mode: int = 0o600) -> None:
        """Listen on an address (unix sockets get ``mode``; the file is removed on close), or serve a socket
        already bound and listening (its file stays the caller's). Returns once accepting."""
        if self._closing:
            raise RuntimeError("ttrpc server is closed")
        path, inode = "", None
        if isinstance(listener, socket.socket):
            sock = listener
        else:
            address = as_address(listener)
            if address.kind not in ("unix", "vsock"):
                raise TransportError(f"{address}: the threaded ttrpc server listens on unix and vsock only")
            sock, inode = bound_socket(address, mode)
            if inode is not None:
                path = address.path
        try:
            sock.setblocking(True)
            sock.listen(listen_backlog())
        except OSError:
            sock.close()
            if inode is not None:
                unlink_if(path, inode)
            raise
        thread = threading.Thread(target=self._accept, args=(sock,), daemon=True, name="ttrpc-accept")
        self._listeners.append((sock, thread, path, inode))
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closing:
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._closing or listener.fileno() < 0:
                    return
                log.warning("ttrpc: accept failed: %s", exc)  # EMFILE and the like: try again shortly
                time.sleep(0.05)
                continue
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closing:
                message: str | None = SHUTTING_DOWN
            else:
                if len(self._connections) >= self.max_connections:
                    self._let_go_of_hung_up()
                message = None
                if len(self._connections) >= self.max_connections:
                    message = too_many_connections(self.max_connections)
            if message is None:
                served = _Served(self, sock)
                self._connections[sock.fileno()] = served
                served.start()
                return
            if self._rejecting >= self.max_connections:
                sock.close()  # even rejections are capped: no status, just a closed socket
                return
            self._rejecting += 1
        threading.Thread(target=self._rejected, args=(sock, message), daemon=True).start()

    def _rejected(self, sock: socket.socket, message: str) -> None:
        try:
            if message == SHUTTING_DOWN or not _request_waiting(sock) or not self._admit_late(sock):
                _reject(sock, message)
        finally:
            with self._lock:
                self._rejecting -= 1

    def _admit_late(self, sock: socket.socket) -> bool:
        """Serve a connection refused at accept time after all, once its first request is here, if there
        is room now: the connections of a connect-and-close burst accepted just before it have been let go
        by their readers, or are seen hung up now (the quiet pause after an empty look does not apply: this
        runs once per refused connection that asks something, not per connect)."""
        with self._lock:
            if self._closing:
                return False
            if len(self._connections) >= self.max_connections:
                self._no_hung_up_until = 0.0
                self._let_go_of_hung_up()
            if len(self._connections) >= self.max_connections:
                return False
            served = _Served(self, sock)
            self._connections[sock.fileno()] = served
            served.start()
            return True

    def _let_go_of_hung_up(self) -> None:
        """With ``_lock`` held: stop counting connections whose peer hung up (their reader sees the EOF)."""
        now = time.monotonic()
        if now < self._no_hung_up_until:
            return
        gone = hung_up(self._connections)
        if not gone:
            self._no_hung_up_until = now + HUNG_UP_QUIET
        for fd in gone:
            self._connections.pop(fd).hang_up()

    def _forget(self, served: _Served) -> None:
        with self._lock:
            for fd, known in list(self._connections.items()):
                if known is served:
                    del self._connections[fd]

    @property
    def connection_count(self) -> int:
        """Connections being served now (rejected ones excluded)."""
        return len(self._connections)

    @property
    def thread_count(self) -> int:
        """Threads that read connections and run calls, busy or idle (accept threads excluded)."""
        return self._threads.count

    def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let running calls answer for up to ``grace`` seconds, then hang up on everyone."""
        with self._lock:
            self._closing = True
            connections = list(self._connections.values())
        for sock, thread, path, inode in self._listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the accept thread
            thread.join(1.0)
            sock.close()
            if inode is not None:
                unlink_if(path, inode)
        self._listeners.clear()
        for served in connections:
            served.drain()
        deadline = time.monotonic() + grace
        for served in connections:
            served.done.wait(max(0.0, deadline - time.monotonic()))
        for served in connections:
            served.hang_up()
        self._watcher.close()
