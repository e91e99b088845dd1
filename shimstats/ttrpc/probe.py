"""Is anybody listening on a unix socket file? One connect, asked the same way everywhere.

Used before replacing a socket file (only a stale one, nobody listening, may go) and while waiting for a
server to come up. Imports nothing but ``socket``: the proxy's ``start`` asks it before any asyncio loads.
"""

from __future__ import annotations

import socket

__all__ = ["listening"]


def listening(path: str, timeout: float = 0.5) -> bool:
    """True when a server listens on the unix socket ``path``: it takes our connect, or its accept queue is
    full (EAGAIN or a connect that does not finish within ``timeout``: busy, not gone). False when the connect
    is refused (a stale file), or there is no socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except (BlockingIOError, TimeoutError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True
