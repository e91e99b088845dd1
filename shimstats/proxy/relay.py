"""The proxy's serving process on threads: our Task server before one inner shim, for as long as it lives.

Forked by ``start`` (shimstats.proxy.fork) and handed our socket already bound and listening, it dials the
inner shim, serves that socket with a ThreadServer, says "ready" (on stdout, for a caller that runs it
directly; start does not wait for it), and serves until one of:
* the inner shim's connection closes: the inner shim exited (after containerd's Shutdown, or it died).
  Without it there is nothing to forward to, so we stop too; containerd then sees our connection close,
  exactly as it would have seen the inner shim's. One connection is kept open only to notice that;
* SIGTERM or SIGINT.
On the way out the calls in flight get a short grace, our socket file is removed, and so is the inner
shim's when it no longer answers (it removed ours instead: see shimstats.proxy.sockets).

Nothing here imports asyncio: the process runs once per pod, and asyncio alone would cost it some 6 MB.

The Task service: every call goes to the inner shim as it came (payload bytes, metadata, the time left
before the caller's deadline as the inner call's timeout; no deadline stays none: Wait blocks until the
task exits), on a connection of its own (``ClientPool``: a blocking connection runs one call at a time),
and the inner shim's answer or status comes back unchanged. Two calls are looked at:
* Stats is answered from the guest agent (``agent_blocking``, translated by ``stats_answer``), loaded on
  the first Stats; on UNAVAILABLE the fallback policy decides (``fallback``);
* Create's runtime options naming our own config are swapped for the inner shim's (``options``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from shimstats.proxy.fallback import StatsFallback, stats_request_id
from shimstats.proxy.settings import TASK_V2_SERVICE, DaemonSettings
from shimstats.proxy.sockets import remove_if_stale, remover, unix_path
from shimstats.ttrpc.pool import ClientPool
from shimstats.ttrpc.server_common import CallContext
from shimstats.ttrpc.status import Code, TtrpcError
from shimstats.ttrpc.sync_client import SyncClient
from shimstats.ttrpc.threads import SyncHandler, ThreadServer
from shimstats.ttrpc.transport import TransportError
from shimstats.wire import TASK_METHODS

if TYPE_CHECKING:
    from shimstats.agent_blocking import BlockingAgentClient
    from shimstats.translate import OutputFormat

__all__ = ["CONNECT_TIMEOUT", "INNER_SOCKET_WAIT", "SHUTDOWN_GRACE", "Relay", "inner_pool", "serve"]

log = logging.getLogger("shimstats.proxy")

CONNECT_TIMEOUT = 5.0
SHUTDOWN_GRACE = 2.0
INNER_SOCKET_WAIT = 2.0
"""How long the inner shim's socket may keep answering after its connection closed before we leave it."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
INNER_IDLE = 8
"""Idle connections to the inner shim kept for the next calls."""


class _Stats(NamedTuple):
    agent: BlockingAgentClient
    output: OutputFormat


class Relay:
    """``containerd.task.v2.Task`` for the proxy (module doc): ``handlers`` for a ThreadServer."""

    def __init__(self, inner: ClientPool, settings: DaemonSettings) -> None:
        self.inner = inner
        self.settings = settings
        self._fallback = StatsFallback(settings.stats_fallback)
        self._stats: _Stats | None = None
        self._stats_lock = threading.Lock()

    def handlers(self) -> dict[str, SyncHandler]:
        """A handler for every Task method."""
        table: dict[str, SyncHandler] = {name: self._forwarder(name) for name in TASK_METHODS}
        table["Stats"] = self.stats
        table["Create"] = self.create
        return table

    def _forwarder(self, method: str) -> SyncHandler:
        def forward_call(payload: bytes, ctx: CallContext) -> bytes:
            return self.forward(method, payload, ctx)

        return forward_call

    def forward(self, method: str, payload: bytes, ctx: CallContext) -> bytes:
        """Send ``payload`` to the inner shim's ``method`` with the caller's metadata and remaining time."""
        timeout = None
        if ctx.deadline is not None:
            timeout = ctx.deadline - time.monotonic()
            if timeout <= 0:
                raise TtrpcError(
                    Code.DEADLINE_EXCEEDED, f"{TASK_V2_SERVICE}/{method}: the deadline has passed"
                )
        return self.inner.call(
            self.settings.inner_service, method, payload, timeout=timeout, metadata=ctx.metadata
        )

    def create(self, payload: bytes, ctx: CallContext) -> bytes:
        """Create, with the proxy's own runtime options replaced by the inner shim's."""
        if self.settings.own_config:
            from shimstats.proxy.options import inner_create

            payload = inner_create(payload, self.settings.own_config, self.settings.inner_config_path)
        return self.forward("Create", payload, ctx)

    def stats(self, payload: bytes, ctx: CallContext) -> bytes:
        """Stats from the guest agent; on UNAVAILABLE, the fallback policy."""
        from shimstats.stats_answer import stats_response, validate_id

        container_id = stats_request_id(payload)
        machinery = self._machinery()
        try:
            validate_id(container_id)
            agent_stats = machinery.agent.stats_container(container_id, deadline=ctx.deadline)
            response = stats_response(container_id, agent_stats, machinery.output)
        except TtrpcError as exc:
            if not self._fallback.forward_instead(container_id, exc):
                raise
            return self.forward("Stats", payload, ctx)
        self._fallback.answered(container_id)
        return response.SerializeToString()

    def _machinery(self) -> _Stats:
        """The agent client and output format, made on the first Stats (translation core included)."""
        with self._stats_lock:
            if self._stats is None:
                from shimstats.agent_blocking import blocking_agent_client
                from shimstats.translate import resolve_format

                agent = blocking_agent_client(
                    self.settings.agent, default_timeout=self.settings.stats_timeout
                )
                self._stats = _Stats(agent, resolve_format(self.settings.metrics_format))
                log.debug("Stats machinery loaded", extra={"format": self._stats.output})
            return self._stats

    def close(self) -> None:
        """Close the agent's connections, when Stats ever made any."""
        if self._stats is not None:
            self._stats.agent.close()


def inner_pool(address: str) -> ClientPool:
    """Connections to the inner shim; a failed dial is UNAVAILABLE (the inner shim is gone)."""

    def dial() -> SyncClient:
        try:
            return SyncClient(address, timeout=None, connect_timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise TtrpcError(Code.UNAVAILABLE, f"cannot reach the inner shim: {exc}") from None

    return ClientPool(dial, keep=INNER_IDLE)


def _listen(server: ThreadServer, settings: DaemonSettings) -> Callable[[], None]:
    """Serve the socket start handed us (or bind ``listen``); returns what removes our socket file."""
    if settings.listen_fd < 0:
        server.start(settings.listen)
        return lambda: None  # the server made the file and removes it when it closes
    listener = socket.socket(fileno=settings.listen_fd)
    remove = remover(unix_path(settings.listen))  # the file start bound, not a successor's
    try:
        server.start(listener)
    except BaseException:
        listener.close()
        raise
    return remove


def serve(settings: DaemonSettings, ready: Callable[[], None] = lambda: None) -> None:
    """Serve until the inner shim goes or a signal comes; ``ready`` is called once we accept calls.

    On the main thread it handles SIGTERM and SIGINT (stop); elsewhere (tests) only the inner shim ends it."""
    try:
        watch = SyncClient(settings.inner_address, timeout=None, connect_timeout=CONNECT_TIMEOUT)
    except TransportError as exc:
        raise TransportError(f"cannot reach the inner shim: {exc}") from None
    stop = threading.Event()

    def watch_inner() -> None:
        watch.wait_closed()
        stop.set()

    inner = inner_pool(settings.inner_address)
    try:
        inner.prime()  # containerd's first call (Create) then finds a connection ready
    except TtrpcError as exc:
        watch.close()
        raise TransportError(exc.message) from None
    relay = Relay(inner, settings)
    server = ThreadServer()
    server.register(TASK_V2_SERVICE, relay.handlers())
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in STOP_SIGNALS}
    remove_socket: Callable[[], None] = lambda: None  # noqa: E731
    try:
        threading.Thread(target=watch_inner, daemon=True, name="inner-watch").start()
        remove_socket = _listen(server, settings)
        log.info(
            "serving %s, forwarding to %s; Stats from the guest agent at %s as %s metrics",
            TASK_V2_SERVICE,
            settings.inner_address,
            settings.agent,
            settings.metrics_format,
            extra={"address": settings.listen},
        )
        ready()
        stop.wait()
        inner_gone = watch.closed
        why = "the inner shim's connection closed" if inner_gone else "signalled"
        log.info("stopping: %s", why, extra={"address": settings.listen})
    finally:
        server.close(grace=SHUTDOWN_GRACE)
        remove_socket()
        watch.close()
        relay.inner.close()
        relay.close()
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, handler)
    if inner_gone:
        path = unix_path(settings.inner_address)
        if not remove_if_stale(path, INNER_SOCKET_WAIT):
            log.warning("the inner shim's socket still answers; left in place", extra={"address": path})
