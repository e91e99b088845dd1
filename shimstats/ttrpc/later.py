"""An answer that a plain handler gives later, from a callback, without a task to wait in.

A coroutine handler costs the server a task per call, a loop turn to start it and another to resume it when
what it awaits is done. A handler whose only wait is one call it can make with a callback (the adapter's
Stats: one call to the guest agent) can instead return a Later at once and settle it from that callback,
in the same turn the awaited answer arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

__all__ = ["Later", "Outcome"]

Outcome = Union[bytes, Exception]
"""The answer's payload, or the exception that is the call's status (a TtrpcError; anything else UNKNOWN)."""


def _nothing() -> None:
    return None


class Later:
    """Returned by a plain handler: the handler calls ``settle`` exactly once (later ones are ignored), the
    server sends what it was given. The server calls ``cancel`` instead when nobody is left to answer (the
    connection closed) or the call's deadline passed first; ``on_cancel`` then undoes what the handler
    started. ``bounded``: the handler settles it before the call's deadline by itself (a timer of its own
    set earlier), so the server arms no timer for it.
    """

    __slots__ = ("_outcome", "_receiver", "bounded", "on_cancel", "settled")

    def __init__(self, *, bounded: bool = False) -> None:
        self.bounded = bounded
        self.on_cancel: Callable[[], None] = _nothing
        self.settled = False
        self._receiver: Callable[[Outcome], None] | None = None
        self._outcome: Outcome = b""

    def settle(self, outcome: Outcome) -> None:
        """The answer (payload bytes) or the failure; kept until the server listens if it has not yet."""
        if self.settled:
            return
        self.settled = True
        if self._receiver is None:
            self._outcome = outcome
        else:
            self._receiver(outcome)

    def listen(self, receiver: Callable[[Outcome], None]) -> None:
        """The server's side: ``receiver`` gets the outcome (at once if the handler already settled)."""
        if self.settled:
            receiver(self._outcome)
        else:
            self._receiver = receiver

    def cancel(self) -> None:
        """Nobody waits for the answer any more: later settles are dropped and ``on_cancel`` runs once."""
        if not self.settled:
            self.settled = True
            self._receiver = None
            self.on_cancel()
