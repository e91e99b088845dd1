"""The proxy's threaded Task service (shimstats.proxy.relay, what the serving process runs) held to the very
tests the asyncio ProxyService passes (tests/integration/test_proxy_forward.py).

Those tests reach the service through their module's ``rig``; here an autouse fixture puts ``relay_rig``
in its place for the duration of each test, so both implementations answer to one set of assertions and
nothing is written twice: containerd's client → a ThreadServer serving Relay → a recording inner shim, and
a real guest agent process for Stats. The serving process's own lifetime (it ends with the inner shim and
cleans both sockets) has a test of its own at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.proxy import relay
from shimstats.proxy.settings import DaemonSettings, Fallback
from shimstats.ttrpc import Client, Server
from shimstats.ttrpc.threads import ThreadServer
from shimstats.wire import TASK_SERVICE
from tests.integration import test_proxy_forward as forward
from tests.integration.harness import AgentProcess, short_tmp

agent = forward.agent  # the module-scoped guest agent fixture

# The asyncio service's tests, run here against the relay (see the module doc).
test_calls_reach_the_inner_shim_untouched = forward.test_calls_reach_the_inner_shim_untouched
test_no_deadline_stays_no_deadline = forward.test_no_deadline_stays_no_deadline
test_the_inner_status_comes_back_unchanged = forward.test_the_inner_status_comes_back_unchanged
test_an_expired_deadline_is_not_forwarded = forward.test_an_expired_deadline_is_not_forwarded
test_stats_come_from_the_agent_not_the_inner_shim = forward.test_stats_come_from_the_agent_not_the_inner_shim
test_unreachable_agent_falls_back_to_the_inner_shim_warning_once_per_container = (
    forward.test_unreachable_agent_falls_back_to_the_inner_shim_warning_once_per_container
)
test_fallback_error_answers_unavailable_and_leaves_the_inner_shim_alone = (
    forward.test_fallback_error_answers_unavailable_and_leaves_the_inner_shim_alone
)
test_an_id_the_agent_does_not_know_is_its_answer_not_a_fallback = (
    forward.test_an_id_the_agent_does_not_know_is_its_answer_not_a_fallback
)
test_create_with_our_options_gives_the_inner_shim_its_own = (
    forward.test_create_with_our_options_gives_the_inner_shim_its_own
)
test_create_with_other_options_is_passed_byte_for_byte = (
    forward.test_create_with_other_options_is_passed_byte_for_byte
)


@contextlib.asynccontextmanager
async def relay_rig(
    agent_address: str, *, fallback: Fallback = "inner", own_config: str = "", inner_config_path: str = ""
) -> AsyncIterator[forward.Rig]:
    """inner shim ← Relay on a ThreadServer ← a client, each on its own unix socket."""
    with short_tmp() as directory:
        inner = forward.InnerShim()
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
            yield forward.Rig(caller, inner, directory)
        finally:
            await caller.close()
            await asyncio.to_thread(proxy.close, 1.0)  # calls in flight may still need this loop
            service.inner.close()
            service.close()
            await inner_server.close(grace=1.0)


@pytest.fixture(autouse=True)
def _the_relay_in_the_rig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forward, "rig", relay_rig)


async def test_the_serving_process_stops_when_the_inner_shim_goes_and_cleans_both_sockets(
    agent: AgentProcess,
) -> None:
    with short_tmp() as directory:
        inner_path, ours = directory / "inner.sock", directory / "ours.sock"
        inner_server = Server()
        inner_server.register(TASK_SERVICE, forward.InnerShim().handlers())
        # Our own listening socket: the server leaves the file behind, as a Go shim that removed *our*
        # socket (named in the bundle's address file) instead of its own does.
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
