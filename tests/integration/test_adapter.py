"""The adapter's service logic against a scripted agent, in one event loop but over real unix sockets.

The scripted agent stands in for an agent we do not run here (a real kata-agent, or one that misbehaves on
purpose): a ttrpc server answering grpc.AgentService/StatsContainer as each test tells it to, recording what
it was asked. The adapter under test is the real one (shimstats.adapter + shimstats.agent_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shimstats import __version__, cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats.adapter import TASK_METHODS, StatsHandler, TaskService, validate_id
from shimstats.agent_client import AgentClient, Backoff, map_agent_error
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.translate import OutputFormat
from shimstats.ttrpc import CallContext, Client, Code, Frame, Server, TtrpcError
from shimstats.ttrpc.framing import FrameDecoder, MessageType, encode_frame, encode_response
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import short_tmp

Answer = Callable[[str, CallContext], Awaitable[bytes]]


def v2_guest_reply(usage: int, inactive_file: int, anon: int) -> agent_pb2.StatsContainerResponse:
    """A reply as an agent on a cgroup v2 guest sends it: usage counter plus the raw memory.stat map."""
    stats = {
        "anon": anon,
        "file": inactive_file,
        "inactive_file": inactive_file,
        "pgfault": 7,
        "pgmajfault": 1,
    }
    memory = agent_pb2.MemoryStats(
        usage=agent_pb2.MemoryData(usage=usage, limit=2**64 - 1), use_hierarchy=True, stats=stats
    )
    return agent_pb2.StatsContainerResponse(cgroup_stats=agent_pb2.CgroupStats(memory_stats=memory))


@dataclass
class ScriptedAgent:
    """grpc.AgentService/StatsContainer answered by ``answer``; records each id and its remaining deadline."""

    directory: Path
    answer: Answer
    asked: list[str] = field(default_factory=list)
    remaining: list[float] = field(default_factory=list)
    server: Server | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.directory}/agent.sock"

    async def _stats(self, payload: bytes, ctx: CallContext) -> bytes:
        container_id = agent_pb2.StatsContainerRequest.FromString(payload).container_id
        self.asked.append(container_id)
        if ctx.deadline is not None:
            self.remaining.append(ctx.deadline - asyncio.get_running_loop().time())
        return await self.answer(container_id, ctx)

    async def _check(self, payload: bytes, ctx: CallContext) -> bytes:
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
        ).SerializeToString()

    async def start(self) -> None:
        self.server = Server()
        self.server.register("grpc.AgentService", {"StatsContainer": self._stats})
        self.server.register("grpc.Health", {"Check": self._check})
        await self.server.start(self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close(grace=0.5)
            self.server = None


def replying(reply: agent_pb2.StatsContainerResponse) -> Answer:
    async def answer(container_id: str, ctx: CallContext) -> bytes:
        return reply.SerializeToString()

    return answer


def failing(code: Code, message: str) -> Answer:
    async def answer(container_id: str, ctx: CallContext) -> bytes:
        raise TtrpcError(code, message)

    return answer


@dataclass
class Stack:
    """A scripted agent, an adapter in front of it, and what containerd would use to call the adapter."""

    agent: ScriptedAgent
    client: AgentClient
    server: Server
    address: str

    async def stats(self, container_id: str, timeout: float = 2.0) -> StatsResult:
        async with await Client.connect(self.address) as containerd:
            return await call_stats(containerd, container_id, namespace="k8s.io", timeout=timeout)


@contextlib.asynccontextmanager
async def stack(
    answer: Answer, output: OutputFormat = "v2", *, backoff: Backoff | None = None
) -> AsyncIterator[Stack]:
    with short_tmp() as directory:
        agent = ScriptedAgent(directory, answer)
        await agent.start()
        client = AgentClient(agent.address, backoff=backoff)
        server = Server()
        TaskService(StatsHandler(client, output, default_namespace="fallback-ns")).register(server)
        address = f"unix://{directory}/adapter.sock"
        await server.start(address)
        try:
            yield Stack(agent, client, server, address)
        finally:
            await server.close(grace=0.5)
            await client.close()
            await agent.stop()


# -- Stats ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["v1", "v2"])
async def test_stats_working_set_is_usage_minus_inactive_file(output: OutputFormat) -> None:
    usage, inactive, anon = 300 << 20, 200 << 20, 90 << 20
    async with stack(replying(v2_guest_reply(usage, inactive, anon)), output) as s:
        result = await s.stats("web-1")
    assert s.agent.asked == ["web-1"]
    assert result.type_url == (cri.V1_TYPE_URL if output == "v1" else cri.V2_TYPE_URL)
    assert result.memory is not None
    assert result.memory.usage_bytes == usage
    assert result.memory.working_set_bytes == usage - inactive
    assert result.memory.rss_bytes == anon
    assert (result.memory.page_faults, result.memory.major_page_faults) == (7, 1)


async def test_deadline_reaches_the_agent() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s:
        await s.stats("web-1", timeout=2.0)
    [remaining] = s.agent.remaining
    assert 1.5 < remaining <= 2.0


async def test_no_deadline_uses_the_default_timeout() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s:
        s.client.default_timeout = 3.0
        async with await Client.connect(s.address) as containerd:
            request = shim_pb2.StatsRequest(id="web-1").SerializeToString()
            await containerd.call(TASK_SERVICE, "Stats", request)  # no timeout: timeout_nano 0
    [remaining] = s.agent.remaining
    assert 2.5 < remaining <= 3.0


async def test_concurrent_calls_share_one_agent_connection() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s:
        results = await asyncio.gather(*(s.stats(f"c-{i}") for i in range(30)))
        assert s.agent.server is not None
        assert s.agent.server.connection_count == 1
        assert s.client.dials == 1
    assert sorted(s.agent.asked) == sorted(f"c-{i}" for i in range(30))
    assert all(r.memory is not None and r.memory.usage_bytes == 10 for r in results)


async def test_a_slow_call_does_not_hold_up_the_others() -> None:
    never = asyncio.Event()

    async def answer(container_id: str, ctx: CallContext) -> bytes:
        if container_id == "slow":
            await never.wait()
        return v2_guest_reply(10, 0, 10).SerializeToString()

    async with stack(answer) as s:
        slow = asyncio.ensure_future(s.stats("slow", timeout=1.0))
        started = time.monotonic()
        fast = await asyncio.gather(*(s.stats(f"fast-{i}") for i in range(20)))
        fast_elapsed = time.monotonic() - started
        with pytest.raises(TtrpcError) as late:
            await slow
    assert all(r.memory is not None for r in fast)
    assert fast_elapsed < 0.5  # done while the slow call was still waiting
    assert late.value.code == Code.DEADLINE_EXCEEDED


# -- statuses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        '"invalid container id"',  # kata-agent 2.4 and later: ttrpc_error! Debug-formats the text
        "invalid container id",  # kata-agent 2.0 to 2.3: get_rpc_status with the bare text
    ],
)
async def test_kata_agents_invalid_container_id_becomes_not_found(message: str) -> None:
    async with stack(failing(Code.INVALID_ARGUMENT, message)) as s:
        with pytest.raises(TtrpcError) as err:
            await s.stats("gone-1")
    assert err.value.code == Code.NOT_FOUND
    assert "gone-1" in err.value.message
    assert message in err.value.message
    assert s.agent.address in err.value.message


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (Code.INVALID_ARGUMENT, "invalid container id: web-1"),  # not kata's exact text
        (Code.NOT_FOUND, "invalid container id"),  # kata's text, but not its code
        (Code.NOT_FOUND, "container 'x': no cgroup found"),
        (Code.INTERNAL, "memory.stat: key 'cache' missing"),
        (Code.PERMISSION_DENIED, "no"),
        (Code.UNIMPLEMENTED, "method StatsContainer"),
    ],
)
async def test_agent_statuses_keep_their_code(code: Code, message: str) -> None:
    async with stack(failing(code, message)) as s:
        with pytest.raises(TtrpcError) as err:
            await s.stats("web-1")
    assert err.value.code == code
    assert message in err.value.message
    assert "web-1" in err.value.message
    assert s.agent.address in err.value.message


def test_map_agent_error_table() -> None:
    address = "vsock://3:1026"
    cases = {
        (Code.INVALID_ARGUMENT, '"invalid container id"'): Code.NOT_FOUND,
        (Code.INVALID_ARGUMENT, "invalid container id"): Code.NOT_FOUND,
        (Code.INVALID_ARGUMENT, "'invalid container id'"): Code.INVALID_ARGUMENT,
        (Code.INVALID_ARGUMENT, "something else"): Code.INVALID_ARGUMENT,
        (Code.NOT_FOUND, "x"): Code.NOT_FOUND,
        (Code.DEADLINE_EXCEEDED, "timeout"): Code.DEADLINE_EXCEEDED,
        (Code.UNAVAILABLE, "lost"): Code.UNAVAILABLE,
        (Code.UNKNOWN, "boom"): Code.UNKNOWN,
    }
    for (code, message), want in cases.items():
        mapped = map_agent_error(TtrpcError(code, message), "abc", address)
        assert mapped.code == want, (code, message)
        assert "'abc'" in mapped.message
        assert address in mapped.message
        assert message in mapped.message


async def test_undecodable_agent_reply_is_internal() -> None:
    async def answer(container_id: str, ctx: CallContext) -> bytes:
        return b"\xff\xff\xff"

    async with stack(answer) as s:
        with pytest.raises(TtrpcError) as err:
            await s.stats("web-1")
    assert err.value.code == Code.INTERNAL
    assert "web-1" in err.value.message


async def test_undecodable_stats_request_is_invalid_argument() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s, await Client.connect(s.address) as containerd:
        with pytest.raises(TtrpcError) as err:
            await containerd.call(TASK_SERVICE, "Stats", b"\xff\xff", timeout=2.0)
    assert err.value.code == Code.INVALID_ARGUMENT
    assert s.agent.asked == []


@pytest.mark.parametrize(
    "bad", ["", "/", "..", "a/b", "a..b", "../x", "-a", "a-", "x" * 77, "a b", "é", "a\x00b"]
)
def test_validate_id_refuses(bad: str) -> None:
    with pytest.raises(TtrpcError) as err:
        validate_id(bad)
    assert err.value.code == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("good", ["a", "web-1", "a.b_c-d", "0" * 64, "x" * 76])
def test_validate_id_accepts_containerd_identifiers(good: str) -> None:
    validate_id(good)


# -- connection handling ----------------------------------------------------------------------------------


def test_backoff_delays() -> None:
    backoff = Backoff(initial=0.05, maximum=1.0, factor=2.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff.delay(10_000) == 1.0
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=2.0, maximum=1.0)


async def test_failed_dials_back_off_then_recover() -> None:
    window = 0.3
    with short_tmp() as directory:
        agent = ScriptedAgent(directory, replying(v2_guest_reply(10, 0, 10)))
        client = AgentClient(agent.address, backoff=Backoff(initial=window, maximum=window))
        try:
            with pytest.raises(TtrpcError) as first:
                await client.stats_container("web-1", deadline=None)
            assert first.value.code == Code.UNAVAILABLE
            assert agent.address in first.value.message
            await agent.start()
            started = time.monotonic()
            with pytest.raises(TtrpcError) as second:  # still inside the window: no dial, at once
                await client.stats_container("web-1")
            assert time.monotonic() - started < window / 2
            assert second.value.code == Code.UNAVAILABLE
            assert "next attempt in" in second.value.message
            assert agent.asked == []
            await asyncio.sleep(window)
            reply = await client.stats_container("web-1")
            assert reply.cgroup_stats.memory_stats.usage.usage == 10
            assert client.dials == 1
        finally:
            await client.close()
            await agent.stop()


async def test_agent_restart_is_redialled_without_a_failed_call() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s:
        await s.stats("web-1")
        await s.agent.stop()
        await s.agent.start()
        result = await s.stats("web-1")
        assert result.memory is not None
        assert s.client.dials == 2


class DroppingAgent:
    """A raw ttrpc peer that hangs up on the first ``drops`` connections as soon as a request arrives (an
    agent dying mid-call), after answering the first ``answered`` requests on each, and answers every request
    on later connections with ``reply``."""

    def __init__(
        self, directory: Path, drops: int, reply: agent_pb2.StatsContainerResponse, *, answered: int = 0
    ) -> None:
        self.path = str(directory / "dropping.sock")
        self.address = f"unix://{self.path}"
        self.drops = drops
        self.answered = answered
        self.reply = reply
        self.connections = 0
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop = self.connections <= self.drops
        decoder = FrameDecoder()
        seen = 0
        try:
            while data := await reader.read(65536):
                for event in decoder.feed(data):
                    if not isinstance(event, Frame) or event.mtype != MessageType.REQUEST:
                        continue
                    self.requests += 1
                    seen += 1
                    if drop and seen > self.answered:
                        return
                    body = encode_response(self.reply.SerializeToString())
                    writer.write(encode_frame(event.stream_id, MessageType.RESPONSE, 0, body))
        finally:
            writer.close()


@pytest.mark.parametrize(("drops", "succeeds"), [(1, True), (2, False)])
async def test_a_connection_lost_mid_call_is_retried_once(drops: int, succeeds: bool) -> None:
    with short_tmp() as directory:
        agent = DroppingAgent(directory, drops, v2_guest_reply(10, 0, 10))
        server = await asyncio.start_unix_server(agent.serve, path=agent.path)
        client = AgentClient(agent.address, backoff=Backoff(initial=0.0, maximum=0.0))
        try:
            if succeeds:
                reply = await client.stats_container("web-1", deadline=None)
                assert reply.cgroup_stats.memory_stats.usage.usage == 10
            else:
                with pytest.raises(TtrpcError) as err:
                    await client.stats_container("web-1")
                assert err.value.code == Code.UNAVAILABLE
                assert agent.address in err.value.message
        finally:
            await client.close()
            server.close()
            await server.wait_closed()
    assert (agent.connections, agent.requests) == (2, 2)  # one retry, never more


async def test_health_check() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s:
        assert await s.client.check(2.0) is True


# -- the rest of the Task service -------------------------------------------------------------------------


async def test_connect_reports_our_pid_and_version() -> None:
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s, await Client.connect(s.address) as containerd:
        raw = await containerd.call(
            TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id="web-1").SerializeToString(), timeout=2.0
        )
    answer = shim_pb2.ConnectResponse.FromString(raw)
    assert answer.shim_pid == os.getpid()
    assert answer.version == f"shimstats {__version__}"
    assert answer.task_pid == 0


async def test_every_other_task_method_is_unimplemented() -> None:
    others = [m for m in TASK_METHODS if m not in ("Stats", "Connect")]
    assert len(others) == 15
    assert {"Create", "Start", "Delete", "Shutdown"} <= set(others)
    async with stack(replying(v2_guest_reply(10, 0, 10))) as s, await Client.connect(s.address) as containerd:
        for method in others:
            with pytest.raises(TtrpcError) as err:
                await containerd.call(TASK_SERVICE, method, b"", timeout=2.0)
            assert err.value.code == Code.UNIMPLEMENTED
            assert method in err.value.message
    assert s.agent.asked == []


async def test_log_lines_name_the_container_and_namespace(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shimstats.adapter")
    async with stack(failing(Code.NOT_FOUND, "no cgroup")) as s:
        with pytest.raises(TtrpcError):
            await s.stats("gone-1")
        async with await Client.connect(s.address) as containerd:  # no namespace metadata: the default
            with pytest.raises(TtrpcError):
                await containerd.call(
                    TASK_SERVICE, "Stats", shim_pb2.StatsRequest(id="gone-2").SerializeToString()
                )
    records = [r for r in caplog.records if r.name == "shimstats.adapter"]
    assert [(r.container_id, r.namespace, r.code) for r in records] == [  # type: ignore[attr-defined]
        ("gone-1", "k8s.io", "NOT_FOUND"),
        ("gone-2", "fallback-ns", "NOT_FOUND"),
    ]
