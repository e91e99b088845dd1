"""The proxy's Task service over real unix sockets: containerd's client → the serving process's Relay on a
ThreadServer (shimstats.proxy.relay) → an inner shim.

The inner shim here is a ttrpc server that records what reaches it and answers every method with bytes
derived from the request (``<method>:`` + payload), so a test can tell exactly what was forwarded and what
came back. Stats is answered by a real guest agent process reading a captured cgroup v2 tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shimstats import cri
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.adapter import TASK_METHODS
from shimstats.protowire import AnyMessage
from shimstats.proxy import relay
from shimstats.proxy.options import AnyOptions, config_path_of, runtime_options
from shimstats.proxy.settings import DaemonSettings
from shimstats.ttrpc import CallContext, Client, Code, Handler, Server, TtrpcError
from shimstats.ttrpc.threads import ThreadServer
from shimstats.wire import NAMESPACE_KEY, TASK_SERVICE
from tests.integration.harness import AgentProcess, fixtures, short_tmp

if TYPE_CHECKING:
    from shimstats.proxy.settings import Fallback

OURS = "/etc/shimstats/kata.toml"
KATA = "/opt/kata/configuration-clh.toml"
FIXTURE = next(fx for fx in fixtures() if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")


@dataclass
class Seen:
    method: str
    payload: bytes
    metadata: dict[str, list[str]]
    time_left: float | None


@dataclass
class InnerShim:
    """A recording Task server; ``fail`` makes a method answer with that error instead."""

    seen: list[Seen] = field(default_factory=list)
    fail: dict[str, TtrpcError] = field(default_factory=dict)

    def handlers(self) -> dict[str, Handler]:
        return {name: self._handler(name) for name in TASK_METHODS}

    def _handler(self, method: str) -> Handler:
        async def handle(payload: bytes, ctx: CallContext) -> bytes:
            left = None if ctx.deadline is None else ctx.deadline - asyncio.get_running_loop().time()
            self.seen.append(Seen(method, payload, ctx.metadata, left))
            if method in self.fail:
                raise self.fail[method]
            return method.encode() + b":" + payload

        return handle


@dataclass
class Rig:
    caller: Client
    inner: InnerShim
    directory: Path


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    """A guest agent on the captured v2 tree (a container with mostly inactive file cache)."""
    with short_tmp() as directory, AgentProcess(directory, FIXTURE.agent_args()) as process:
        yield process


@contextlib.asynccontextmanager
async def rig(
    agent_address: str, *, fallback: Fallback = "inner", own_config: str = "", inner_config_path: str = ""
) -> AsyncIterator[Rig]:
    """inner shim ← Relay on a ThreadServer ← a client, each on its own unix socket in a fresh short
    directory."""
    with short_tmp() as directory:
        inner = InnerShim()
        inner_server = Server()
        inner_server.register(TASK_SERVICE, inner.handlers())
        await inner_server.start(f"unix://{directory}/inner.sock")
        settings = DaemonSettings(
            listen=f"unix://{directory}/proxy.sock",
            inner_address=f"unix://{directory}/inner.sock",
            agent=agent_address,
            metrics_format="v2",
            stats_fallback=fallback,
            own_config=own_config,
            inner_config_path=inner_config_path,
        )
        service = relay.Relay(relay.inner_pool(settings.inner_address), settings)
        proxy = ThreadServer()
        proxy.register(TASK_SERVICE, service.handlers())
        proxy.start(settings.listen)
        caller = await Client.connect(settings.listen)
        try:
            yield Rig(caller, inner, directory)
        finally:
            await caller.close()
            await asyncio.to_thread(proxy.close, 1.0)  # calls in flight may still need this loop
            service.inner.close()
            service.close()
            await inner_server.close(grace=1.0)


FORWARDED = [name for name in TASK_METHODS if name not in ("Stats", "Create")]


@pytest.mark.parametrize("method", FORWARDED)
async def test_calls_reach_the_inner_shim_untouched(agent: AgentProcess, method: str) -> None:
    payload = bytes(range(256)) * 3  # not a valid message of any kind: proves nobody decodes it
    metadata = {NAMESPACE_KEY: "k8s.io", "x-trace": ["a", "b"]}
    async with rig(agent.address) as r:
        answer = await r.caller.call(TASK_SERVICE, method, payload, timeout=5.0, metadata=metadata)
    assert answer == method.encode() + b":" + payload
    [seen] = r.inner.seen
    assert (seen.method, seen.payload) == (method, payload)
    assert seen.metadata == {NAMESPACE_KEY: ["k8s.io"], "x-trace": ["a", "b"]}
    assert seen.time_left is not None
    assert 4.0 < seen.time_left <= 5.0  # what was left of the caller's 5 s, not a fresh or no deadline


async def test_no_deadline_stays_no_deadline(agent: AgentProcess) -> None:
    """Wait blocks until the task exits: the proxy must not invent a timeout for it."""
    async with rig(agent.address) as r:
        await r.caller.call(TASK_SERVICE, "Wait", shim_pb2.WaitRequest(id="c1").SerializeToString())
    assert r.inner.seen[0].time_left is None


async def test_the_inner_status_comes_back_unchanged(agent: AgentProcess) -> None:
    detail = AnyMessage(type_url="containerd.v1.types.Detail", value=b"\x08\x01")
    failure = TtrpcError(Code.FAILED_PRECONDITION, "task must be stopped before deletion: running", [detail])
    async with rig(agent.address) as r:
        r.inner.fail["Delete"] = failure
        with pytest.raises(TtrpcError) as info:
            await r.caller.call(TASK_SERVICE, "Delete", b"", timeout=5.0)
    assert (info.value.code, info.value.message) == (failure.code, failure.message)
    assert info.value.details == [detail]


async def test_an_expired_deadline_is_not_forwarded(agent: AgentProcess) -> None:
    async with rig(agent.address) as r:
        with pytest.raises(TtrpcError) as info:
            await r.caller.call(TASK_SERVICE, "State", b"", timeout=1e-6)
    assert info.value.code == Code.DEADLINE_EXCEEDED
    assert r.inner.seen == []


def _working_set(stats: bytes) -> int:
    metrics = cri.decode_metrics(shim_pb2.StatsResponse.FromString(stats).stats)
    memory = cri.cri_memory(metrics)
    assert memory is not None
    return memory.working_set_bytes


async def test_stats_come_from_the_agent_not_the_inner_shim(agent: AgentProcess) -> None:
    request = shim_pb2.StatsRequest(id=FIXTURE.request_id).SerializeToString()
    async with rig(agent.address) as r:
        answer = await r.caller.call(TASK_SERVICE, "Stats", request, timeout=5.0)
    assert r.inner.seen == []
    stats = shim_pb2.StatsResponse.FromString(answer).stats
    assert stats.type_url == cri.V2_TYPE_URL
    memory = FIXTURE.keyed("memory", "memory.stat")
    usage = int(FIXTURE.file("memory", "memory.current"))
    assert _working_set(answer) == usage - memory["inactive_file"]  # the fixture's own files, v2 rule


async def test_unreachable_agent_falls_back_to_the_inner_shim_warning_once_per_container(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with short_tmp() as nowhere:
        async with rig(f"unix://{nowhere}/no-agent.sock") as r:
            caplog.set_level(logging.INFO, logger="shimstats.proxy")
            answers = []
            for container_id in ("c1", "c1", "c1", "c2"):
                request = shim_pb2.StatsRequest(id=container_id).SerializeToString()
                answers.append((request, await r.caller.call(TASK_SERVICE, "Stats", request, timeout=5.0)))
    assert all(answer == b"Stats:" + request for request, answer in answers)
    assert [seen.method for seen in r.inner.seen] == ["Stats"] * 4
    warnings = [
        rec for rec in caplog.records if rec.levelno == logging.WARNING and rec.name == "shimstats.proxy"
    ]
    assert [rec.__dict__["id"] for rec in warnings] == ["c1", "c2"]
    assert "unreachable" in warnings[0].getMessage()


async def test_fallback_error_answers_unavailable_and_leaves_the_inner_shim_alone() -> None:
    with short_tmp() as nowhere:
        async with rig(f"unix://{nowhere}/no-agent.sock", fallback="error") as r:
            with pytest.raises(TtrpcError) as info:
                await r.caller.call(TASK_SERVICE, "Stats", shim_pb2.StatsRequest(id="c1").SerializeToString())
    assert info.value.code == Code.UNAVAILABLE
    assert "no-agent.sock" in info.value.message
    assert r.inner.seen == []


async def test_an_id_the_agent_does_not_know_is_its_answer_not_a_fallback(agent: AgentProcess) -> None:
    async with rig(agent.address) as r:
        with pytest.raises(TtrpcError) as info:
            await r.caller.call(TASK_SERVICE, "Stats", shim_pb2.StatsRequest(id="nobody").SerializeToString())
    assert info.value.code == Code.NOT_FOUND
    assert r.inner.seen == []


def _create(options: AnyOptions | None) -> shim_pb2.CreateTaskRequest:
    request = shim_pb2.CreateTaskRequest(id="c1", bundle="/run/b/c1", terminal=True, stdout="/fifo/out")
    if options is not None:
        request.options.type_url, request.options.value = options
    return request


@pytest.mark.parametrize(("inner_config_path", "expected"), [(KATA, KATA), ("", None)])
async def test_create_with_our_options_gives_the_inner_shim_its_own(
    agent: AgentProcess, inner_config_path: str, expected: str | None
) -> None:
    request = _create(runtime_options(OURS))
    async with rig(agent.address, own_config=OURS, inner_config_path=inner_config_path) as r:
        await r.caller.call(TASK_SERVICE, "Create", request.SerializeToString(), timeout=5.0)
    got = shim_pb2.CreateTaskRequest.FromString(r.inner.seen[0].payload)
    if expected is None:
        assert not got.HasField("options")
    else:
        assert config_path_of(got.options) == expected
    got.ClearField("options")
    request.ClearField("options")
    assert got == request  # nothing else changed


@pytest.mark.parametrize(
    ("own_config", "options"), [(OURS, runtime_options(KATA)), ("", runtime_options(OURS))]
)
async def test_create_with_other_options_is_passed_byte_for_byte(
    agent: AgentProcess, own_config: str, options: AnyOptions
) -> None:
    payload = _create(options).SerializeToString()
    async with rig(agent.address, own_config=own_config, inner_config_path=KATA) as r:
        await r.caller.call(TASK_SERVICE, "Create", payload, timeout=5.0)
    assert r.inner.seen[0].payload == payload


async def test_the_serving_process_stops_when_the_inner_shim_goes_and_cleans_both_sockets(
    agent: AgentProcess,
) -> None:
    with short_tmp() as directory:
        inner_path, ours = directory / "inner.sock", directory / "ours.sock"
        inner_server = Server()
        inner_server.register(TASK_SERVICE, InnerShim().handlers())
        # A listening socket made here: the server leaves its file behind when it closes, as a Go shim
        # that removed *our* socket (named in the bundle's address file) instead of its own does.
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(inner_path))
        listener.listen()
        await inner_server.start(listener)
        settings = DaemonSettings(
            listen=f"unix://{ours}", inner_address=f"unix://{inner_path}", agent=agent.address
        )
        ready = threading.Event()
        serving = asyncio.create_task(asyncio.to_thread(relay.serve, settings, ready.set))
        assert await asyncio.to_thread(ready.wait, 10)
        async with await Client.connect(f"unix://{ours}") as caller:
            state = shim_pb2.StateRequest(id="c1").SerializeToString()
            assert await caller.call(TASK_SERVICE, "State", state, timeout=5) == b"State:" + state
        await inner_server.close(grace=0.5)  # the inner shim exits
        await asyncio.wait_for(serving, 10)
        assert not ours.exists()
        assert not inner_path.exists()
