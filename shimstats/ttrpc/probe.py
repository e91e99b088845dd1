"""Is anybody listening on a unix socket file? One connect, asked the same way everywhere.

Used before replacing a socket file (only a stale one, nobody listening, may go) and while waiting for a
server to come up. Imports nothing but ``_socket``, the C module under ``socket``: the proxy's ``start`` and
``delete`` ask it, and importing ``socket`` (its enums) costs them ~13M instructions (docs/benchmarks.md).
"""

from __future__ import annotations

import _socket

__all__ = ["listening"]


def listening(path: str, timeout: float = 0.5) -> bool:
    """True when a server listens on the unix socket ``path``: it takes our connect, or its accept queue is
    full (EAGAIN or a connect that does not finish within ``timeout``: busy, not gone). False when the connect
    is refused (a stale file), or there is no socket at ``path``."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # socket.socket's own C base
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
