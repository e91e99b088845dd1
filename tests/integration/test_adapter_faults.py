"""Faults between containerd, the adapter and a real guest agent process, through real unix sockets.

Each test names the status containerd must see: UNAVAILABLE naming the agent's address when the agent is
gone, success again once it is back, DEADLINE_EXCEEDED soon after the deadline when the agent never
answers, NOT_FOUND for an id the agent does not know, INVALID_ARGUMENT (without asking the agent) for an id
containerd could never send; and concurrent callers are unaffected by each other's failures.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.adapter import ANSWER_MARGIN, TASK_SERVICE
from shimstats.agent_client import Backoff
from shimstats.fake_containerd import StatsResult
from shimstats.ttrpc import Code, TtrpcError
from tests.integration.harness import (
    AgentProcess,
    Fixture,
    SilentAgent,
    fake_stats,
    fixtures,
    raw_call,
    running_adapter,
    short_tmp,
)

BACKOFF = Backoff(initial=0.05, maximum=0.05)
DEADLINE_MARGIN = 0.25
"""How late a DEADLINE_EXCEEDED may come after the deadline: scheduling and one round trip, generously."""


def container_fixture() -> Fixture:
    return next(fx for fx in fixtures() if not fx.is_root)


async def test_agent_killed_between_calls_is_unavailable_then_back_after_restart() -> None:
    fx = container_fixture()
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        async with running_adapter(agent.address, "v1", directory, backoff=BACKOFF) as (address, client):
            before = await fake_stats(address, fx.request_id)
            agent.kill()
            with pytest.raises(TtrpcError) as gone:
                await fake_stats(address, fx.request_id)
            assert gone.value.code == Code.UNAVAILABLE
            assert agent.address in gone.value.message
            assert fx.request_id in gone.value.message
            agent.start()
            await asyncio.sleep(BACKOFF.maximum)  # the failed dial's backoff window has passed
            after = await fake_stats(address, fx.request_id)
            assert after.memory == before.memory  # a captured tree does not change between calls
            assert client.dials == 2


async def test_agent_restarted_unnoticed_costs_no_failed_call() -> None:
    """The adapter's connection died while idle: the next call redials once and succeeds."""
    fx = container_fixture()
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        async with running_adapter(agent.address, "v2", directory, backoff=BACKOFF) as (address, client):
            before = await fake_stats(address, fx.request_id)
            agent.kill()
            agent.start()
            after = await fake_stats(address, fx.request_id)
            assert after.memory == before.memory
            assert client.dials == 2


async def test_agent_that_never_answers_is_deadline_exceeded_in_time() -> None:
    fx = container_fixture()
    timeout = 0.5
    with short_tmp() as directory:
        async with (
            SilentAgent(directory) as silent,
            running_adapter(silent.address, "v1", directory) as (
                address,
                _,
            ),
        ):
            payload = shim_pb2.StatsRequest(id=fx.request_id).SerializeToString()
            started = time.monotonic()
            with pytest.raises(TtrpcError) as late:
                await raw_call(address, TASK_SERVICE, "Stats", payload, int(timeout * 1e9))
            elapsed = time.monotonic() - started
            # containerd's own client gives up at its deadline too
            with pytest.raises(TtrpcError) as late_again:
                await fake_stats(address, fx.request_id, timeout=timeout)
    assert late.value.code == Code.DEADLINE_EXCEEDED
    assert late_again.value.code == Code.DEADLINE_EXCEEDED
    # The adapter answers just before the caller's deadline (ANSWER_MARGIN early), so that the caller gets
    # our status naming the agent rather than its own timer's, which would name the adapter.
    assert timeout - ANSWER_MARGIN <= elapsed < timeout + DEADLINE_MARGIN
    assert silent.address in late.value.message
    assert silent.address in late_again.value.message
    # the caller's remaining deadline reached the agent as timeout_nano
    assert len(silent.timeouts) == 2
    assert all(timeout * 1e9 - DEADLINE_MARGIN * 1e9 < t <= timeout * 1e9 for t in silent.timeouts)


async def test_unknown_id_is_not_found() -> None:
    fx = container_fixture()
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        async with running_adapter(agent.address, "v1", directory) as (address, _):
            with pytest.raises(TtrpcError) as missing:
                await fake_stats(address, "no-such-container")
    assert missing.value.code == Code.NOT_FOUND
    assert "no-such-container" in missing.value.message
    assert agent.address in missing.value.message


@pytest.mark.parametrize("bad_id", ["", "/", "..", "../etc", "a/b", "a..b", "x" * 77, "a b"])
async def test_bad_id_is_invalid_argument_without_asking_the_agent(bad_id: str) -> None:
    with short_tmp() as directory:
        async with (
            SilentAgent(directory) as silent,
            running_adapter(silent.address, "v1", directory) as (
                address,
                _,
            ),
        ):
            with pytest.raises(TtrpcError) as refused:
                await fake_stats(address, bad_id, timeout=2.0)
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert silent.timeouts == []  # the agent was never asked (it would not have answered)


async def test_concurrent_callers_are_unaffected_by_failing_ones() -> None:
    fx = container_fixture()
    ids = [fx.request_id, "no-such-container", "bad/id"] * 20
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        async with running_adapter(agent.address, "v1", directory) as (address, client):
            reference = await fake_stats(address, fx.request_id)
            results = await asyncio.gather(
                *(fake_stats(address, container_id) for container_id in ids), return_exceptions=True
            )
            assert client.dials == 1  # every call went over the one agent connection
    for container_id, result in zip(ids, results):
        if container_id == fx.request_id:
            assert isinstance(result, StatsResult), result
            assert result.memory == reference.memory
        else:
            assert isinstance(result, TtrpcError), result
            want = Code.NOT_FOUND if container_id == "no-such-container" else Code.INVALID_ARGUMENT
            assert result.code == want
