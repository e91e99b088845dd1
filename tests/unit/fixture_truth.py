"""Ground truth of the captured fixtures' containers, read as ``verify --cgroup`` reads a live cgroup: for
the verify, compare and explain tests."""

from __future__ import annotations

import asyncio

from shimstats.ground_truth import CgroupSource, GroundTruth
from tests.integration.harness import Fixture, fixtures

CONTAINERS = [fx for fx in fixtures() if not fx.is_root]
V2_INACTIVE = next(fx for fx in CONTAINERS if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")
V1_PAGECACHE = next(fx for fx in CONTAINERS if fx.name == "v1-6.18.44-fc-v669-container-pagecache")


def read_truth(fx: Fixture) -> GroundTruth:
    """Ground truth for a fixture's container, read like --cgroup reads a live one."""

    async def read() -> GroundTruth:
        source = CgroupSource(str(fx.memory_dir), meminfo=str(fx.path / "meminfo"))
        try:
            return await source.read()
        finally:
            await source.close()

    return asyncio.run(read())
