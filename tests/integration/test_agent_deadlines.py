"""Deadlines: an expired call is its own caller's business, and its status names the hop that ran out.

The agent here stands in for a guest agent whose cgroup read is slow (a guest under memory pressure, a
cgroup with thousands of tasks): our own ttrpc server on a real unix socket, whose StatsContainer handler
sleeps before answering, and never answers for the id "hung" (the server then answers DEADLINE_EXCEEDED at
the request's timeout_nano, as kata-agent's ttrpc-rust server and our guest agent do). It counts every
request it receives. Calls go through the real adapter (shimstats.adapter + AgentClient), as containerd's.

Behind `shimstats serve` (a real process), a hung agent (SilentAgent: reads, never answers) must cost the
caller a DEADLINE_EXCEEDED that names the agent, with a log line from serve saying the same, whether the
deadline was the caller's or serve's own --timeout; a hung serve must cost the caller one naming serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.adapter import TASK_SERVICE
from shimstats.agent_client import AGENT_SERVICE
from shimstats.fake_containerd import StatsResult
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError
from tests.integration.harness import (
    CLI,
    REPO,
    ServeProcess,
    SilentAgent,
    fake_stats,
    raw_call,
    running_adapter,
    short_tmp,
)

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


async def _stats_cli(address: str, container_id: str, timeout: str) -> tuple[int, str]:
    """``shimstats stats`` as a user runs it (in a subprocess, so this loop keeps serving the agent)."""
    process = await asyncio.create_subprocess_exec(
        *CLI, "stats", "--shim", address, "--id", container_id, "--timeout", timeout,
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_a_hung_agent_behind_serve_is_named_on_both_sides() -> None:
    with short_tmp() as directory:
        async with SilentAgent(directory) as silent:
            with ServeProcess(directory, silent.address, "--timeout", "0.5") as serve:
                code, callers_deadline = await _stats_cli(serve.address, "web-1", "1")
                request = shim_pb2.StatsRequest(id="web-2").SerializeToString()
                with pytest.raises(TtrpcError) as serves_timeout:  # no deadline: serve's --timeout
                    await raw_call(serve.address, TASK_SERVICE, "Stats", request, timeout_nano=0)
                assert serve.stop() == 0
            lines = serve.log_lines()
    # the caller's side: the agent is named, not serve's socket, and whose deadline it was
    assert code == 1, callers_deadline
    assert "DEADLINE_EXCEEDED" in callers_deadline
    assert f"the guest agent at {silent.address} did not answer" in callers_deadline
    assert "of the caller's 1s deadline" in callers_deadline
    assert serves_timeout.value.code == Code.DEADLINE_EXCEEDED
    assert f"the guest agent at {silent.address} did not answer" in serves_timeout.value.message
    assert "within 0.5s, serve's --timeout (the caller set no deadline)" in serves_timeout.value.message
    # serve's side: one warning per expiry, with the container and the same explanation
    warned = {line["container_id"]: line for line in lines if "container_id" in line}
    assert warned["web-1"]["level"] == warned["web-2"]["level"] == "warning"
    assert warned["web-1"]["code"] == warned["web-2"]["code"] == "DEADLINE_EXCEEDED"
    assert "of the caller's 1s deadline" in warned["web-1"]["msg"]
    assert "serve's --timeout" in warned["web-2"]["msg"]
    assert all(silent.address in warned[i]["msg"] for i in ("web-1", "web-2"))


async def test_a_hung_serve_is_named_by_its_caller() -> None:
    with short_tmp() as directory:
        async with SilentAgent(directory) as silent:
            with ServeProcess(directory, silent.address) as serve:
                os.kill(serve.process.pid, signal.SIGSTOP)
                try:
                    code, err = await _stats_cli(serve.address, "web-1", "0.5")
                finally:
                    os.kill(serve.process.pid, signal.SIGCONT)
    assert code == 1, err
    assert f"DEADLINE_EXCEEDED: containerd.task.v2.Task/Stats: no answer from {serve.address}" in err
    assert silent.address not in err
