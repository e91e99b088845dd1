"""A container's cgroup removed under a running agent, on this machine's live kernel cgroups (root only).

runc removes a container's cgroup one hierarchy at a time, in no fixed order, while containerd may be asking
for its stats. Every answer during that teardown must be the container's stats (OK) or NOT_FOUND (containerd
skips a task that is gone), never INTERNAL; a cgroup removed between discovery and the read is NOT_FOUND; and
the same agent goes on answering for the containers that are still there. The cgroups here are empty (no
process), so rmdir works at once; everything created is removed, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from shimstats.fake_containerd import StatsResult
from shimstats.ttrpc import Code, TtrpcError
from tests.integration.harness import AgentProcess, fake_stats, running_adapter, short_tmp

pytestmark = [
    pytest.mark.live_cgroup,
    pytest.mark.skipif(os.geteuid() != 0, reason="creating cgroups needs root"),
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
CYCLES = 15
"""Create-and-tear-down rounds per test; each takes some 50 ms."""


def _mounts() -> list[Path]:
    layout = detect_layout(str(CGROUP_ROOT))
    return [Path(m) for m in sorted({os.path.realpath(h.mount) for h in layout.controllers.values()})]


@contextlib.contextmanager
def empty_cgroup(name: str) -> Iterator[list[Path]]:
    """``name`` created in every hierarchy the agent reads; whatever is left is removed on the way out."""
    created = []
    try:
        for mount in _mounts():
            (mount / name).mkdir()
            created.append(mount / name)
        yield created
    finally:
        for directory in created:
            with contextlib.suppress(FileNotFoundError):
                directory.rmdir()


async def _call(address: str, container_id: str) -> StatsResult | TtrpcError:
    try:
        return await fake_stats(address, container_id, timeout=2.0)
    except TtrpcError as exc:
        return exc


async def _hammer(
    address: str, container_id: str, done: asyncio.Event, outcomes: list[StatsResult | TtrpcError]
) -> None:
    """Ask for ``container_id`` again and again until ``done``."""
    while not done.is_set():
        outcomes.append(await _call(address, container_id))


async def test_a_cgroup_torn_down_hierarchy_by_hierarchy_is_ok_or_not_found_never_internal() -> None:
    outcomes: list[StatsResult | TtrpcError] = []
    neighbour = f"shimstats-fault-{uuid.uuid4().hex[:8]}"
    rng = random.Random(8)
    with short_tmp() as directory, empty_cgroup(neighbour), AgentProcess(directory, []) as agent:
        async with running_adapter(agent.address, "v1", directory) as (address, _):
            for cycle in range(CYCLES):
                name = f"shimstats-fault-{uuid.uuid4().hex[:8]}-{cycle}"
                with empty_cgroup(name) as directories:
                    first = await _call(address, name)  # discovered and cached
                    assert isinstance(first, StatsResult), first
                    done = asyncio.Event()

                    callers = [asyncio.create_task(_hammer(address, name, done, outcomes)) for _ in range(3)]
                    for victim in rng.sample(directories, len(directories)):  # runc's order is a map's
                        await asyncio.sleep(rng.uniform(0.0, 0.004))
                        victim.rmdir()
                    last = await _call(address, name)
                    done.set()
                    await asyncio.gather(*callers)
                assert isinstance(last, TtrpcError)
                assert last.code == Code.NOT_FOUND, last
                assert isinstance(await _call(address, neighbour), StatsResult)  # the others still answer
    codes = {o.code for o in outcomes if isinstance(o, TtrpcError)}
    assert codes <= {Code.NOT_FOUND}, [
        str(o) for o in outcomes if isinstance(o, TtrpcError) and o.code != Code.NOT_FOUND
    ][:3]
    assert any(isinstance(o, TtrpcError) for o in outcomes), "no call landed during a teardown"


async def test_a_cgroup_removed_between_discovery_and_read_is_not_found_and_found_again() -> None:
    name = f"shimstats-fault-{uuid.uuid4().hex[:8]}"
    with short_tmp() as directory, AgentProcess(directory, []) as agent:
        async with running_adapter(agent.address, "v2", directory) as (address, _):
            with empty_cgroup(name):
                assert isinstance(await _call(address, name), StatsResult)  # the path is now cached
            gone = await _call(address, name)
            with empty_cgroup(name):  # a container of the same id comes back (a restart)
                back = await _call(address, name)
    assert isinstance(gone, TtrpcError)
    assert gone.code == Code.NOT_FOUND
    assert name in gone.message
    assert isinstance(back, StatsResult), back
