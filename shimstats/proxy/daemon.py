"""The proxy's serving process in asyncio: our Task server in front of one inner shim, while that shim lives.

The serving process ``start`` launches runs the threaded form, shimstats.proxy.relay (no asyncio: some 6 MB
less per pod and a quicker start); this one, on an event loop, shares its constants and rules and serves
callers that already run a loop. What follows holds for both.

Started by ``start`` (shimstats.proxy.launch) with our socket already bound and listening (an inherited
fd), it dials the inner shim, serves that socket, says "ready" (on stdout, for a caller that runs it
directly; start does not wait for it), and serves until one of:
* the inner shim's connection closes: the inner shim exited (after containerd's Shutdown, or it died).
  Without it there is nothing to forward to, so we stop too; containerd then sees our connection close,
  exactly as it would have seen the inner shim's;
* SIGTERM or SIGINT.
On the way out the calls in flight get a short grace, our socket file is removed, and so is the inner
shim's when it no longer answers (it removed ours instead: see shimstats.proxy.sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
from collections.abc import Callable

from shimstats.proxy.forward import ProxyService, agent_stats
from shimstats.proxy.relay import CONNECT_TIMEOUT, INNER_SOCKET_WAIT, SHUTDOWN_GRACE
from shimstats.proxy.settings import TASK_V2_SERVICE, DaemonSettings
from shimstats.proxy.sockets import remove_if_stale, remover, unix_path
from shimstats.ttrpc import Client, Server, TransportError

__all__ = ["serve"]

log = logging.getLogger("shimstats.proxy")

INNER_POLL = 0.1
"""Seconds between looks at the inner connection (a closed flag; no I/O)."""


async def _closed(client: Client) -> None:
    """Return once ``client``'s connection is gone (Client offers a flag, not an awaitable: we poll it)."""
    while not client.closed:  # noqa: ASYNC110
        await asyncio.sleep(INNER_POLL)


async def _listen(server: Server, settings: DaemonSettings) -> Callable[[], None]:
    """Serve the socket start handed us (or bind ``listen``); returns what removes our socket file."""
    if settings.listen_fd < 0:
        await server.start(settings.listen)
        return lambda: None  # the server made the file and removes it when it closes
    listener = socket.socket(fileno=settings.listen_fd)
    remove = remover(unix_path(settings.listen))  # the file start bound, not a successor's
    try:
        await server.start(listener)
    except BaseException:
        listener.close()
        raise
    return remove


async def serve(settings: DaemonSettings, ready: Callable[[], None] = lambda: None) -> None:
    """Serve until the inner shim goes or a signal comes; ``ready`` is called once we accept calls."""
    try:
        inner = await Client.connect(settings.inner_address, timeout=CONNECT_TIMEOUT)
    except TransportError as exc:
        raise TransportError(f"cannot reach the inner shim: {exc}") from None
    make_stats = functools.partial(
        agent_stats,
        settings.agent,
        settings.metrics_format,
        timeout=settings.stats_timeout,
        namespace=settings.namespace,
    )
    service = ProxyService(
        inner,
        make_stats=make_stats,
        fallback=settings.stats_fallback,
        inner_service=settings.inner_service,
        own_config=settings.own_config,
        inner_config_path=settings.inner_config_path,
    )
    server = Server()
    service.register(server)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waits: list[asyncio.Task[object]] = []
    inner_gone = False
    remove_socket: Callable[[], None] = lambda: None  # noqa: E731
    try:
        remove_socket = await _listen(server, settings)
        log.info(
            "serving %s, forwarding to %s; Stats from the guest agent at %s as %s metrics",
            TASK_V2_SERVICE,
            settings.inner_address,
            settings.agent,
            settings.metrics_format,
            extra={"address": settings.listen},
        )
        ready()
        waits = [loop.create_task(_closed(inner)), loop.create_task(stop.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        inner_gone = inner.closed
        why = "the inner shim's connection closed" if inner_gone else "signalled"
        log.info("stopping: %s", why, extra={"address": settings.listen})
    finally:
        for task in waits:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.close(grace=SHUTDOWN_GRACE)
        remove_socket()
        await inner.close()
        await service.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if inner_gone:
        path = unix_path(settings.inner_address)
        if not await loop.run_in_executor(None, remove_if_stale, path, INNER_SOCKET_WAIT):
            log.warning("the inner shim's socket still answers; left in place", extra={"address": path})
