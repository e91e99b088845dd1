"""What both ttrpc servers share, the asyncio one (``server.py``) and the threaded one (``threads.py``):
the context a handler gets, the over-cap policy's numbers and words, and the look for hung-up peers.
No event loop and no threads here."""

from __future__ import annotations

import select
from collections.abc import Iterable

from shimstats.ttrpc.peer import Peer

__all__ = [
    "HUNG_UP_QUIET",
    "REJECT_WINDOW",
    "SHUTTING_DOWN",
    "CallContext",
    "hung_up",
    "too_many_connections",
]

REJECT_WINDOW = 1.0
"""Over-cap connections get this long to send a first request (answered RESOURCE_EXHAUSTED); then we hang
up."""
HUNG_UP_QUIET = 0.05
"""A look for hung-up connections that found none is not repeated for this long: each look polls every
served connection, and a flood of live connections over the cap would otherwise pay it per refused connect."""
SHUTTING_DOWN = "ttrpc server is shutting down"

# poll() events meaning the peer has closed (its side, or all of it): POLLRDHUP is Linux's "peer shut down
# writing", which a connect-and-close leaves set before we read the EOF.
_HUNG_UP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


class CallContext:
    """What a handler knows about its call. ``deadline`` is in ``time.monotonic()`` units (asyncio's
    ``loop.time()``), None when unbounded. (A class with slots, made once per call: no dataclass.)"""

    __slots__ = ("deadline", "metadata", "method", "peer", "service", "stream_id")

    def __init__(
        self,
        service: str,
        method: str,
        stream_id: int,
        metadata: dict[str, list[str]] | None = None,
        deadline: float | None = None,
        peer: Peer | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.stream_id = stream_id
        self.metadata: dict[str, list[str]] = {} if metadata is None else metadata
        self.deadline = deadline
        self.peer = Peer(address="") if peer is None else peer


def too_many_connections(limit: int) -> str:
    """The RESOURCE_EXHAUSTED message for a connection over the cap."""
    return f"too many connections to this ttrpc server (limit {limit})"


def hung_up(fds: Iterable[int]) -> list[int]:
    """The fds among ``fds`` whose peer has closed, EOF not yet read (connect-and-close floods)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, _HUNG_UP)
    return [fd for fd, _ in poller.poll(0)]
