"""Run ``shimstats serve`` on uvloop when asked: SHIMSTATS_EVENT_LOOP=uvloop, with shimstats[fast] installed.

Why opt-in rather than "whenever installed": our listeners keep the kernel's whole accept queue by
overriding the listening socket's listen() (shimstats.ttrpc.transport), which uvloop bypasses, so a connect
storm against serve is refused under uvloop (tests/integration/test_listen_backlog.py); and on this shared
2-core machine the end-to-end Stats median showed no gain we could tell from noise (docs/benchmarks.md).
The guest agent never uses it (it stays on protobuf and the standard library).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "SHIMSTATS_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when SHIMSTATS_EVENT_LOOP=uvloop and it is installed, else None (asyncio's)."""
    if os.environ.get(ENV, "") != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, on uvloop when loop_factory gives one."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
