"""shimstats.event_loop: asyncio unless SHIMSTATS_EVENT_LOOP=uvloop asks for uvloop (when installed)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from shimstats import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_loop_by_default(monkeypatch):
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.loop_factory() is None
    assert event_loop.run(_loop_module()).startswith("asyncio")


NO_UVLOOP = importlib.util.find_spec("uvloop") is None


@pytest.mark.skipif(NO_UVLOOP, reason="uvloop (shimstats[fast]) not installed")
def test_uvloop_when_asked(monkeypatch):
    monkeypatch.setenv(event_loop.ENV, "uvloop")
    assert event_loop.run(_loop_module()).startswith("uvloop")
