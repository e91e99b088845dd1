"""Faults of the guest agent, seen through the adapter: the status each caller gets, and nobody else pays.

A scripted agent (a raw ttrpc peer on a real unix socket) answers each StatsContainer by the container id it
is asked for: a real reply from a captured v2 tree, a reply that does not decode, a stream of random bytes,
a reply on the wrong stream id, a hang-up, or nothing. A real agent process is then stopped mid-call and
killed, and killed and restarted under load. What must hold: each caller gets the status its fault deserves
(INTERNAL, DEADLINE_EXCEEDED, UNAVAILABLE), no call outlives its deadline, callers of a healthy container on
the same adapter are answered, and once the agent behaves again so is everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.kata import agent_pb2
from shimstats.agent_client import Backoff
from shimstats.fake_containerd import StatsResult, call_stats, stats_metadata
from shimstats.ttrpc import Client, Code, Frame, TtrpcError
from shimstats.ttrpc.framing import (
    FrameDecoder,
    MessageType,
    decode_request,
    encode_frame,
    encode_response,
)
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import AgentProcess, fake_stats, running_adapter, short_tmp
from tests.integration.hostile_rig import FIXTURE

BACKOFF = Backoff(initial=0.02, maximum=0.05)
MARGIN = 0.3
"""How late a failure may come after its deadline: scheduling and one round trip, generously."""
OK_ID = FIXTURE.request_id


def fixture_reply() -> bytes:
    """What a healthy agent answers for OK_ID: the captured tree read by the agent's own reader."""
    reader = CgroupReader(detect_layout(str(FIXTURE.path / "cgroup")), meminfo=str(FIXTURE.path / "meminfo"))
    try:
        return to_response(reader.read(str(FIXTURE.meta["container_path"]))).SerializeToString()
    finally:
        reader.close()


@dataclass
class ScriptedAgent:
    """Answers StatsContainer(id) by id: OK_ID well, the others with the fault their name says."""

    path: Path
    reply: bytes = field(default_factory=fixture_reply)
    connections: int = 0
    asked: list[str] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for event in decoder.feed(data):
                if isinstance(event, Frame) and event.mtype == MessageType.REQUEST:
                    request = decode_request(event.payload)
                    container_id = agent_pb2.StatsContainerRequest.FromString(request.payload).container_id
                    self.asked.append(container_id)
                    if not self.answer(writer, event.stream_id, container_id):
                        writer.close()
                        return

    def answer(self, writer: asyncio.StreamWriter, stream_id: int, container_id: str) -> bool:
        """Write the scripted answer; False to hang up."""
        if container_id == OK_ID:
            writer.write(encode_frame(stream_id, MessageType.RESPONSE, 0, encode_response(self.reply)))
        elif container_id == "garbage-reply":  # field 1 with wire type 7: no protobuf parser takes it
            writer.write(
                encode_frame(stream_id, MessageType.RESPONSE, 0, encode_response(b"\x0f" + os.urandom(40)))
            )
        elif (
            container_id == "garbage-stream"
        ):  # a nonzero first byte announces gigabytes: the rest is swallowed
            writer.write(b"\x7f" + os.urandom(4095))
        elif container_id == "wrong-stream":
            writer.write(encode_frame(stream_id + 2, MessageType.RESPONSE, 0, encode_response(self.reply)))
        elif container_id == "hang-up":
            return False
        return True  # "silent": read and never answered

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedAgent]:
        server = await asyncio.start_unix_server(self.serve, path=str(self.path))
        try:
            yield self
        finally:
            for writer in self._writers:  # the handlers see EOF and return before the server closes
                writer.close()
            await asyncio.sleep(0.05)
            server.close()
            await server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def _stats(address: str, container_id: str, timeout: float) -> tuple[StatsResult | TtrpcError, float]:
    started = time.monotonic()
    try:
        result: StatsResult | TtrpcError = await fake_stats(address, container_id, timeout=timeout)
    except TtrpcError as exc:
        result = exc
    return result, time.monotonic() - started


def _assert_ok(result: StatsResult | TtrpcError) -> None:
    assert isinstance(result, StatsResult), result
    assert result.metrics.memory.usage == int(FIXTURE.file("memory", "memory.current"))


@contextlib.asynccontextmanager
async def adapter_on(directory: Path) -> AsyncIterator[tuple[str, ScriptedAgent]]:
    async with (
        ScriptedAgent(directory / "scripted.sock").running() as agent,
        running_adapter(agent.address, "v2", directory, backoff=BACKOFF) as (address, _),
    ):
        yield address, agent


async def test_an_undecodable_reply_is_internal_and_the_others_are_answered() -> None:
    with short_tmp() as directory:
        async with adapter_on(directory) as (address, agent):
            ids = [OK_ID, OK_ID, "garbage-reply"] * 8
            results = await asyncio.gather(*(_stats(address, i, 2.0) for i in ids))
            assert agent.connections == 1  # a bad payload is the call's problem, not the connection's
    for container_id, (result, _) in zip(ids, results):
        if container_id == OK_ID:
            _assert_ok(result)
        else:
            assert isinstance(result, TtrpcError)
            assert result.code == Code.INTERNAL
            assert "does not decode" in result.message
            assert agent.address in result.message


async def test_a_garbage_stream_costs_its_caller_a_deadline_and_nobody_else_an_answer() -> None:
    with short_tmp() as directory:
        async with adapter_on(directory) as (address, agent):
            _assert_ok((await _stats(address, OK_ID, 2.0))[0])
            (garbage, garbage_took), (healthy, _) = await asyncio.gather(
                _stats(address, "garbage-stream", 0.5), _stats_after(0.1, address, OK_ID, 3.0)
            )
            later = [(await _stats(address, OK_ID, 2.0))[0] for _ in range(3)]
            connections = agent.connections
    assert isinstance(garbage, TtrpcError)
    assert garbage.code == Code.DEADLINE_EXCEEDED
    assert garbage_took < 0.5 + MARGIN
    # The garbled connection is dropped at that deadline; the healthy call in flight on it and every later
    # call go over a fresh one.
    _assert_ok(healthy)
    for result in later:
        _assert_ok(result)
    assert connections == 2


async def _stats_after(
    delay: float, address: str, container_id: str, timeout: float
) -> tuple[StatsResult | TtrpcError, float]:
    await asyncio.sleep(delay)
    return await _stats(address, container_id, timeout)


@pytest.mark.parametrize(
    ("container_id", "code"),
    [
        ("wrong-stream", Code.DEADLINE_EXCEEDED),
        ("silent", Code.DEADLINE_EXCEEDED),
        ("hang-up", Code.UNAVAILABLE),
    ],
)
async def test_a_lost_answer_is_its_callers_status_and_the_next_caller_is_served(
    container_id: str, code: Code
) -> None:
    with short_tmp() as directory:
        async with adapter_on(directory) as (address, _):
            result, took = await _stats(address, container_id, 0.5)
            after, _ = await _stats(address, OK_ID, 2.0)
    assert isinstance(result, TtrpcError)
    assert result.code == code, result
    assert took < 0.5 + MARGIN
    _assert_ok(after)


# -- a real agent process ------------------------------------------------------------------------------------


async def test_an_agent_killed_mid_call_fails_the_calls_in_flight_at_once() -> None:
    with short_tmp() as directory, AgentProcess(directory, FIXTURE.agent_args()) as agent:
        async with running_adapter(agent.address, "v2", directory, backoff=BACKOFF) as (address, client):
            _assert_ok((await _stats(address, OK_ID, 2.0))[0])
            assert agent.process is not None
            os.kill(agent.process.pid, signal.SIGSTOP)  # calls sent now are in flight until the kill
            in_flight = [asyncio.create_task(_stats(address, OK_ID, 5.0)) for _ in range(5)]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in in_flight)
            async with await Client.connect(address) as other:  # another caller of the adapter
                connect = shim_pb2.ConnectRequest(id=OK_ID).SerializeToString()
                await other.call(
                    TASK_SERVICE, "Connect", connect, timeout=1.0, metadata=stats_metadata("k8s.io")
                )
            agent.kill()
            results = await asyncio.gather(*in_flight)
            agent.start()
            await asyncio.sleep(BACKOFF.maximum)
            after, _ = await _stats(address, OK_ID, 2.0)
            assert client.dials == 2
    for result, took in results:
        assert isinstance(result, TtrpcError)
        assert result.code == Code.UNAVAILABLE
        assert took < 0.3 + 2.0  # failed with the kill, far from the 5 s deadline
    _assert_ok(after)


async def test_an_agent_restarted_under_load_costs_only_unavailable_and_then_serves_everyone() -> None:
    with short_tmp() as directory, AgentProcess(directory, FIXTURE.agent_args()) as agent:
        async with running_adapter(agent.address, "v2", directory, backoff=BACKOFF) as (address, _):
            stop = asyncio.Event()
            outcomes: list[tuple[StatsResult | TtrpcError, float]] = []

            async def caller() -> None:
                async with await Client.connect(address) as client:
                    while not stop.is_set():
                        started = time.monotonic()
                        try:
                            result = await call_stats(client, OK_ID, namespace="k8s.io", timeout=1.0)
                            outcomes.append((result, time.monotonic() - started))
                        except TtrpcError as exc:
                            outcomes.append((exc, time.monotonic() - started))
                            await asyncio.sleep(0.01)

            callers = [asyncio.create_task(caller()) for _ in range(8)]
            await asyncio.sleep(0.3)
            for _ in range(2):
                agent.kill()
                await asyncio.sleep(0.1)
                await asyncio.to_thread(agent.start)
                await asyncio.sleep(0.3)
            served_before_stop = len(outcomes)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*callers)
    codes = {r.code for r, _ in outcomes if isinstance(r, TtrpcError)}
    assert codes <= {Code.UNAVAILABLE}, codes
    assert all(took < 1.0 + MARGIN for _, took in outcomes)
    tail = outcomes[served_before_stop:]
    assert tail
    for result, _ in tail:
        _assert_ok(result)
