"""Faults around the shims: the inner shim killed under the proxy, a real container exiting mid-call.

- The proxy forwards task calls to an inner shim (here ``shimstats serve``, a real Task server in its own
  process). Stopped with calls in flight and then killed, the inner shim takes the proxy with it (containerd
  then sees the proxy's connection close, as it would have seen the inner shim's): every call in flight
  ends at once with UNAVAILABLE instead of waiting out its deadline, the proxy exits 0 and removes its
  socket.
- A busybox container under a real containerd 1.6 + runc is deleted while callers ask our adapter (guest
  agent on this machine's live cgroup v1) for its stats: every answer is its stats or NOT_FOUND, each
  within its deadline, and NOT_FOUND once the cgroup is gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.fake_containerd import StatsResult, stats_metadata
from shimstats.ttrpc import Client, Code, TtrpcError
from shimstats.wire import TASK_SERVICE
from tests.containerd_env import PAGE_CACHE_COMMAND, READY_MARKER, Containerd
from tests.integration.conftest import unique_container_id
from tests.integration.harness import AgentProcess, fake_stats, running_adapter, short_tmp
from tests.integration.hostile_rig import FIXTURE, stack, stats_request

DEADLINE = 5.0


async def _outcome(call: Awaitable[bytes]) -> tuple[bytes | TtrpcError, float]:
    started = time.monotonic()
    try:
        result: bytes | TtrpcError = await call
    except TtrpcError as exc:
        result = exc
    return result, time.monotonic() - started


@pytest.mark.slow
async def test_the_inner_shim_killed_under_the_proxy_fails_calls_at_once_and_the_proxy_leaves() -> None:
    with stack() as running:
        proxy = running.targets()["proxy"]
        meta = stats_metadata("k8s.io")
        async with await Client.connect(proxy.address) as caller:
            await proxy.good_call(caller)
            os.kill(running.inner.process.pid, signal.SIGSTOP)
            connect = shim_pb2.ConnectRequest(id="c1").SerializeToString()
            forwarded = [
                asyncio.create_task(
                    _outcome(caller.call(TASK_SERVICE, "Connect", connect, timeout=DEADLINE, metadata=meta))
                )
                for _ in range(4)
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in forwarded), "the stopped inner shim cannot have answered"
            # Stats is the proxy's own: answered from the agent while the inner shim is stopped.
            await proxy.good_call(caller)
            running.inner.process.kill()
            results = await asyncio.gather(*forwarded)
            stats_after, _ = await _outcome(
                caller.call(
                    TASK_SERVICE, "Stats", stats_request(FIXTURE.request_id), timeout=DEADLINE, metadata=meta
                )
            )
        exit_status = running.proxy.process.wait(timeout=10)
        socket_left = proxy.path.exists()
    for result, took in results:
        assert isinstance(result, TtrpcError), result
        assert result.code == Code.UNAVAILABLE, result
        assert took < 0.3 + 2.0, took  # with the kill, not at the 5 s deadline
    # The proxy is on its way out: a late Stats is either still answered or refused as unavailable.
    assert isinstance(stats_after, bytes) or stats_after.code == Code.UNAVAILABLE, stats_after
    assert exit_status == 0
    assert not socket_left


@pytest.mark.containerd
@pytest.mark.live_cgroup
async def test_a_container_deleted_mid_call_is_ok_or_not_found_within_the_deadline(
    containerd: Containerd, request: pytest.FixtureRequest
) -> None:
    container = containerd.run_busybox(unique_container_id(request), list(PAGE_CACHE_COMMAND))
    deleted = False
    try:
        container.wait_for_output(READY_MARKER)
        outcomes: list[tuple[StatsResult | TtrpcError, float]] = []
        with short_tmp() as directory, AgentProcess(directory, []) as agent:  # found by discovery
            async with running_adapter(agent.address, "v1", directory) as (address, _):

                async def ask() -> None:
                    started = time.monotonic()
                    try:
                        result: StatsResult | TtrpcError = await fake_stats(
                            address, container.id, timeout=2.0
                        )
                    except TtrpcError as exc:
                        result = exc
                    outcomes.append((result, time.monotonic() - started))

                await ask()
                assert isinstance(outcomes[0][0], StatsResult), outcomes[0][0]
                deletion = asyncio.create_task(asyncio.to_thread(containerd.kill, container))
                while not deletion.done():
                    await asyncio.gather(*(ask() for _ in range(4)))
                await deletion
                deleted = True
                await ask()
    finally:
        if not deleted:
            containerd.kill(container)
    assert not container.memory_cgroup.exists()
    assert len(outcomes) > 2, "no call was made while the container was being deleted"
    for result, took in outcomes:
        assert took < 2.0 + 0.5
        if isinstance(result, TtrpcError):
            assert result.code == Code.NOT_FOUND, result
        else:
            assert result.memory is not None
    last = outcomes[-1][0]
    assert isinstance(last, TtrpcError)
    assert last.code == Code.NOT_FOUND
    assert container.id in last.message
