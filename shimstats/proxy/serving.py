"""The serving process's entry: logging, asyncio without ssl, then the daemon until it ends.

Two ways in: ``start`` forks and its child runs here with the socket it bound (no second interpreter, no
second round of imports before containerd's first call is answered), and the ``serve`` action runs here
when started by hand or by tests. Heavy imports happen only here: asyncio (without ssl: the proxy never
speaks TLS, and OpenSSL would cost every pod megabytes), the ttrpc server and client; the adapter and the
translation core wait for the first Stats (shimstats.proxy.forward).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from shimstats.proxy import logs as proxy_logs
from shimstats.proxy.settings import DaemonSettings

__all__ = ["run_server", "serve_in_child"]

log = logging.getLogger("shimstats.proxy")


def run_server(
    settings: DaemonSettings,
    *,
    debug: bool,
    fields: dict[str, str],
    ready: Callable[[], None],
    failed: Callable[[str], None] = lambda message: None,
) -> int:
    """Serve ``settings`` with logs on stderr; 0 when it ended normally, 1 (logged, and told to
    ``failed``) when it could not serve."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]  # asyncio then runs without TLS support
    import asyncio

    from shimstats.proxy.daemon import serve
    from shimstats.ttrpc import AddressError, TransportError

    proxy_logs.configure(sys.stderr, logging.DEBUG if debug else logging.INFO, fields)
    if not debug:
        # The agent client warns at every failed dial; our once-per-container warning says it instead.
        logging.getLogger("shimstats.agent").setLevel(logging.ERROR)
    try:
        asyncio.run(serve(settings, ready))
    except (TransportError, AddressError, OSError, ValueError) as exc:
        log.error("serving failed: %s", exc)
        failed(str(exc))
        return 1
    return 0


def serve_in_child(
    settings: DaemonSettings, log_fd: int | None, *, debug: bool, fields: dict[str, str]
) -> int:
    """Fork; in the child, detach (new session, cwd /, stdio off containerd's pipes) and serve.

    Returns the child's pid to the parent; the child never returns. Its stderr is the bundle's log fifo
    (``log_fd``), where containerd copies shim logs from, as Go shims dup that fifo onto their stderr.
    """
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.setsid()
        os.chdir("/")  # never hold the bundle directory, which containerd removes
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # containerd reads start's stdout and stderr to their end: let go of both
        os.dup2(log_fd if log_fd is not None else devnull, 2)
        os.close(devnull)
        if log_fd is not None:
            os.close(log_fd)
        child = {**fields, "pid": str(os.getpid())}
        status = run_server(settings, debug=debug, fields=child, ready=lambda: None)
    finally:
        logging.shutdown()
        os._exit(status)
