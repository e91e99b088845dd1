"""The integration harness (tests/integration/harness.py) itself works."""

from __future__ import annotations

import asyncio
import time

import pytest

from shimstats.agent_client import AgentClient
from shimstats.ttrpc import Client
from tests.integration.harness import FIXTURES, AgentProcess, SilentAgent, accepts, fixtures, short_tmp


def test_fixtures_are_found_and_described() -> None:
    found = fixtures()
    assert found, f"no fixture under {FIXTURES}"
    for fixture in found:
        assert fixture.meta["name"] == fixture.name
        assert fixture.meta["mode"] in ("v1", "v2", "hybrid")
        # Fixture.file looks where the fixture keeps its cgroup: memory.stat has the key every rule needs
        stat = fixture.keyed("memory", "memory.stat")
        assert ("total_inactive_file" if fixture.guest_version == 1 else "inactive_file") in stat


def test_agent_starts_answers_and_sigterm_removes_its_socket() -> None:
    fixture = fixtures()[0]
    with short_tmp() as directory, AgentProcess(directory, fixture.agent_args()) as agent:
        assert agent.socket.exists()

        async def health() -> bool:
            client = AgentClient(agent.address)
            try:
                return await client.check(5.0)
            finally:
                await client.close()

        assert asyncio.run(health()) is True
        assert agent.stop() == 0
        assert not agent.socket.exists(), agent.log()


def test_a_killed_agent_restarts_on_its_stale_socket() -> None:
    fixture = fixtures()[0]
    with short_tmp() as directory, AgentProcess(directory, fixture.agent_args()) as agent:
        agent.kill()
        assert agent.socket.exists()  # SIGKILL leaves the file; nothing accepts on it
        assert not accepts(agent.socket)
        agent.start()
        assert accepts(agent.socket)


async def test_silent_agent_records_timeouts_and_never_answers() -> None:
    with short_tmp() as directory:
        async with SilentAgent(directory) as silent:
            client = await Client.connect(silent.address)
            started = time.monotonic()
            with pytest.raises(Exception, match="no answer"):
                await client.call("grpc.AgentService", "StatsContainer", b"", timeout=0.2)
            assert time.monotonic() - started < 1.0
            await client.close()
        assert len(silent.timeouts) == 1
        assert 0 < silent.timeouts[0] <= 200_000_000
