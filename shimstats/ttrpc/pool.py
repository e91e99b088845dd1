"""Blocking connections to one ttrpc server, one per call in progress: an idle one is reused, another is
dialled when all are busy. SyncClient runs one call at a time; a server (runc's and Kata's shims, our agent)
takes many connections, so concurrent callers each get their own and none waits behind another's call."""

from __future__ import annotations

import threading
from collections.abc import Callable

from shimstats.ttrpc.framing import Metadata
from shimstats.ttrpc.status import Code, TtrpcError
from shimstats.ttrpc.sync_client import SyncClient

__all__ = ["ClientPool"]


class ClientPool:
    """``dial`` makes a connection (raising what it raises); at most ``keep`` idle ones are kept open.

    With ``retry_lost``, a call on a reused connection that turns out to be dead (the server restarted
    since) is sent once more on a fresh one: only for calls that are safe to repeat.
    """

    def __init__(self, dial: Callable[[], SyncClient], *, keep: int = 4, retry_lost: bool = False) -> None:
        self._dial = dial
        self.keep = keep
        self.retry_lost = retry_lost
        self._idle: list[SyncClient] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> bytes:
        """One unary call on a connection of its own (SyncClient.call's timeout and errors)."""
        client, reused = self._take()
        try:
            return client.call(service, method, payload, timeout=timeout, metadata=metadata)
        except TtrpcError as exc:
            if not (self.retry_lost and reused and exc.code == Code.UNAVAILABLE and client.closed):
                raise
        finally:
            self._give_back(client)
        client = self._dial()
        try:
            return client.call(service, method, payload, timeout=timeout, metadata=metadata)
        finally:
            self._give_back(client)

    def prime(self) -> None:
        """Dial one connection ahead of the first call (raising what ``dial`` raises)."""
        self._give_back(self._dial())

    def _take(self) -> tuple[SyncClient, bool]:
        with self._lock:
            if self._closed:
                raise TtrpcError(Code.UNAVAILABLE, "the connection pool is closed")
            while self._idle:
                client = self._idle.pop()
                if not client.closed:
                    return client, True
        return self._dial(), False

    def _give_back(self, client: SyncClient) -> None:
        if client.closed:
            return
        with self._lock:
            if not self._closed and len(self._idle) < self.keep:
                self._idle.append(client)
                return
        client.close()

    def close(self) -> None:
        """Close the idle connections; busy ones close when their call returns. Later calls fail."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for client in idle:
            client.close()
