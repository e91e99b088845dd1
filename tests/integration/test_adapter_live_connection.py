"""The adapter's Stats on a live agent connection, where no task waits for the agent (StatsHandler.start:
the agent's answer is translated and sent from the callback that read it), against the first call, which
dials and waits in a task: the same answers, statuses, deadlines and retry."""

from __future__ import annotations

import asyncio

import pytest

from shimstats.agent_client import AgentClient, Backoff
from shimstats.fake_containerd import StatsResult
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError
from tests.integration.harness import short_tmp
from tests.integration.test_adapter import (
    Answer,
    DroppingAgent,
    Stack,
    failing,
    replying,
    stack,
    v2_guest_reply,
)


async def outcome(s: Stack, container_id: str, timeout: float = 2.0) -> StatsResult | tuple[Code, str]:
    try:
        return await s.stats(container_id, timeout)
    except TtrpcError as exc:
        return exc.code, exc.message


async def undecodable(container_id: str, ctx: CallContext) -> bytes:
    return b"\xff\xff\xff"


@pytest.mark.parametrize(
    "answer",
    [
        replying(v2_guest_reply(10, 3, 7)),
        failing(Code.INVALID_ARGUMENT, '"invalid container id"'),
        failing(Code.NOT_FOUND, "container 'x': no cgroup found"),
        failing(Code.INTERNAL, "memory.stat: key 'cache' missing"),
        undecodable,
    ],
)
async def test_calls_on_a_live_connection_answer_as_the_first_one_did(answer: Answer) -> None:
    async with stack(answer) as s:
        first = await outcome(s, "web-1")  # dials: waits in a task
        again = [await outcome(s, "web-1") for _ in range(3)]  # on the live connection
        assert s.client.dials == 1
    assert again == [first] * 3
    if isinstance(first, tuple):
        assert "web-1" in first[1]
    else:
        assert first.memory is not None


async def test_an_invalid_id_on_a_live_connection_never_reaches_the_agent() -> None:
    async with stack(replying(v2_guest_reply(10, 3, 7))) as s:
        await s.stats("web-1")
        assert await outcome(s, "../etc") == await outcome(s, "../etc")
        code, _ = await outcome(s, "../etc")  # type: ignore[misc]
    assert code == Code.INVALID_ARGUMENT
    assert s.agent.asked == ["web-1"]


async def test_the_agent_hop_deadline_on_a_live_connection() -> None:
    release = asyncio.Event()

    async def answer(container_id: str, ctx: CallContext) -> bytes:
        if container_id == "slow":
            await release.wait()
        return v2_guest_reply(10, 0, 10).SerializeToString()

    async with stack(answer) as s:
        await s.stats("fast-0")
        with pytest.raises(TtrpcError) as late:
            await s.stats("slow", timeout=0.5)
        release.set()
        after = await s.stats("fast-1")  # the expired call gave up its stream only
        assert s.client.dials == 1
    assert late.value.code == Code.DEADLINE_EXCEEDED
    assert "the hop from this adapter to the agent timed out" in late.value.message
    assert s.agent.address in late.value.message
    assert after.memory is not None
    assert 0.3 < s.agent.remaining[1] < 0.5  # the agent got the caller's deadline less the answer margin


async def test_a_live_connection_lost_under_a_call_is_dialled_again_and_the_call_answered() -> None:
    from shimstats.adapter import StatsHandler, TaskService

    with short_tmp() as directory:
        # The first connection answers one request, then hangs up at the next: an agent dying under a call
        # on a connection that worked.
        agent = DroppingAgent(directory, 1, v2_guest_reply(10, 0, 10), answered=1)
        listener = await asyncio.start_unix_server(agent.serve, path=agent.path)
        client = AgentClient(agent.address, backoff=Backoff(initial=0.0, maximum=0.0))
        server = Server()
        TaskService(StatsHandler(client, "v2")).register(server)
        address = f"unix://{directory}/adapter.sock"
        await server.start(address)
        s = Stack(None, client, server, address)  # type: ignore[arg-type]
        try:
            first = await s.stats("web-1")
            second = await s.stats("web-1")  # sent on the live connection, which the agent drops
        finally:
            await server.close(grace=0.5)
            await client.close()
            listener.close()
            await listener.wait_closed()
    assert first.to_json() == second.to_json()
    assert (agent.connections, agent.requests, client.dials) == (2, 3, 2)
