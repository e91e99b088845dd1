"""The serving process's entry: logging, then the threaded relay until it ends.

``start``'s forked child (shimstats.proxy.fork) calls ``run_server`` with the socket start bound
(``listen_fd``); tests and people run the ``serve`` action with ``--listen``. Heavy imports happen only
here: the ttrpc server and client on threads (no asyncio: it would cost every pod some 6 MB); the agent
client and the translation core wait for the first Stats (shimstats.proxy.relay).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from shimstats.proxy import logs as proxy_logs
from shimstats.proxy.settings import DaemonSettings

__all__ = ["run_server"]

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
    from shimstats.proxy.relay import serve
    from shimstats.ttrpc.address import AddressError
    from shimstats.ttrpc.transport import TransportError

    proxy_logs.configure(sys.stderr, logging.DEBUG if debug else logging.INFO, fields)
    if not debug:
        # The agent client warns at every failed dial; our once-per-container warning says it instead.
        logging.getLogger("shimstats.agent").setLevel(logging.ERROR)
    try:
        serve(settings, ready)
    except (TransportError, AddressError, OSError, ValueError) as exc:
        log.error("serving failed: %s", exc)
        failed(str(exc))
        return 1
    return 0
