"""Run an awaitable against an event-loop-time deadline, the one timeout rule client and server share."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

from shimstats.ttrpc.status import Code, TtrpcError

T = TypeVar("T")


async def wait_until(aw: Awaitable[T], deadline: float | None, message: str) -> T:
    """Await ``aw``; if ``loop.time()`` reaches ``deadline`` first, cancel it and raise DEADLINE_EXCEEDED.

    A TimeoutError the awaitable raises by itself is passed through untouched: only our own expiry becomes
    DEADLINE_EXCEEDED.
    """
    if deadline is None:
        return await aw
    if sys.version_info >= (3, 11):
        scope = asyncio.timeout_at(deadline)
        try:
            async with scope:
                return await aw
        except TimeoutError:
            if scope.expired():
                raise TtrpcError(Code.DEADLINE_EXCEEDED, message) from None
            raise
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(aw, max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        if loop.time() >= deadline:
            raise TtrpcError(Code.DEADLINE_EXCEEDED, message) from None
        raise
