"""Deadlines on the one shared agent connection: an expired call is its own caller's business.

The agent here stands in for a guest agent whose cgroup read is slow (a guest under memory pressure, a
cgroup with thousands of tasks): our own ttrpc server on a real unix socket, whose StatsContainer handler
sleeps before answering, and never answers for the id "hung" (the server then answers DEADLINE_EXCEEDED at
the request's timeout_nano, as kata-agent's ttrpc-rust server and our guest agent do). It counts every
request it receives. Calls go through the real adapter (shimstats.adapter + AgentClient), as containerd's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from shimstats._proto.kata import agent_pb2
from shimstats.agent_client import AGENT_SERVICE
from shimstats.fake_containerd import StatsResult
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError
from tests.integration.harness import fake_stats, running_adapter, short_tmp

SLOW_READ = 1.0
"""Seconds the stand-in agent takes to read the slow container's cgroup."""


def _reply(usage: int) -> bytes:
    memory = agent_pb2.MemoryStats(
        usage=agent_pb2.MemoryData(usage=usage, limit=2**64 - 1),
        use_hierarchy=True,
        stats={"anon": usage, "file": 0, "inactive_file": 0},
    )
    return agent_pb2.StatsContainerResponse(
        cgroup_stats=agent_pb2.CgroupStats(memory_stats=memory)
    ).SerializeToString()


@dataclass
class SlowAgent:
    """StatsContainer: "hung" never answers, every other id after SLOW_READ seconds; counts requests and
    says when ``slow_wanted`` requests for "slow" have arrived."""

    path: Path
    slow_wanted: int
    requests: Counter[str] = field(default_factory=Counter)
    slow_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    server: Server = field(default_factory=Server)

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    async def stats_container(self, payload: bytes, ctx: CallContext) -> bytes:
        container_id = agent_pb2.StatsContainerRequest.FromString(payload).container_id
        self.requests[container_id] += 1
        if self.requests["slow"] == self.slow_wanted:
            self.slow_arrived.set()
        if container_id == "hung":
            await asyncio.Event().wait()  # cancelled by the server at the request's deadline
        await asyncio.sleep(SLOW_READ)
        return _reply(4096)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SlowAgent]:
        self.server.register(AGENT_SERVICE, {"StatsContainer": self.stats_container})
        await self.server.start(self.address)
        try:
            yield self
        finally:
            await self.server.close(grace=0.5)


async def _outcome(address: str, container_id: str, timeout: float) -> StatsResult | TtrpcError:
    try:
        return await fake_stats(address, container_id, timeout=timeout)
    except TtrpcError as exc:
        return exc


async def test_two_expiring_calls_cost_the_fifty_slow_calls_in_flight_nothing() -> None:
    with short_tmp() as directory:
        async with (
            SlowAgent(directory / "agent.sock", slow_wanted=50).running() as agent,
            running_adapter(agent.address, "v2", directory) as (address, client),
        ):
            slow = [asyncio.create_task(_outcome(address, "slow", 10.0)) for _ in range(50)]
            await asyncio.wait_for(agent.slow_arrived.wait(), 10.0)  # all fifty in flight on the connection
            first = asyncio.create_task(_outcome(address, "hung", 0.3))
            await asyncio.sleep(0.15)  # the second expires while the first one's expiry is being handled
            hung = [await _outcome(address, "hung", 0.3), await first]
            results = await asyncio.gather(*slow)
            dials = client.dials
    for result in hung:
        assert isinstance(result, TtrpcError)
        assert result.code == Code.DEADLINE_EXCEEDED, result
    for result in results:
        assert isinstance(result, StatsResult), result
        assert result.metrics.memory.usage == 4096
    assert agent.requests == {"slow": 50, "hung": 2}  # nothing was sent twice
    assert dials == 1  # the connection outlived both expiries
