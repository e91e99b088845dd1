"""Soak: 100,000 Stats calls through the adapter and a guest agent, both real processes; nothing leaks.

16 concurrent callers on one connection (as containerd keeps one per shim) ask the adapter (``shimstats
serve``, log level warning as deployed) for a container of a captured cgroup v2 tree; the adapter asks the
agent over its one shared connection. psutil samples both processes' RSS and open fds every 10,000 calls.
After the first 10,000 (imports, caches and allocator pools settle) both must be flat: RSS within
RSS_GROWTH, fds within FD_DRIFT. Every answer is OK; every 100th is decoded and checked against the fixture.
Takes some 30-60 s here, hence ``slow``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shimstats import cri
from shimstats._proto.cgroups.v2 import metrics_pb2 as v2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.fake_containerd import stats_metadata
from shimstats.ttrpc import Client
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import CLI, REPO, START_TIMEOUT, AgentProcess, accepts, short_tmp
from tests.integration.hostile_rig import FIXTURE

pytestmark = pytest.mark.slow

CALLS = 100_000
SAMPLE_EVERY = 10_000
CALLERS = 16
RSS_GROWTH = 2 * 2**20
"""Bytes an RSS may grow between the first sample after warm-up and any later one."""
FD_DRIFT = 2
"""Open fds may differ by this much between samples (a connection being replaced, a cached file)."""


class QuietAdapter:
    """``shimstats --log-level warning serve`` on DIR/adapter.sock, v2 metrics: no per-call log line."""

    def __init__(self, directory: Path, agent_address: str) -> None:
        self.socket = directory / "adapter.sock"
        self.address = f"unix://{self.socket}"
        argv = [*CLI, "--log-level", "warning", "serve", "--listen", self.address, "--agent", agent_address]
        self.process = subprocess.Popen([*argv, "--metrics-format", "v2"], cwd=REPO, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("shimstats serve did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[tuple[str, psutil.Process, psutil.Process]]:
    with (
        short_tmp() as directory,
        AgentProcess(directory, [*FIXTURE.agent_args(), "--log-level", "warning"]) as agent,
    ):
        adapter = QuietAdapter(directory, agent.address)
        try:
            assert agent.process is not None
            yield adapter.address, psutil.Process(agent.process.pid), psutil.Process(adapter.process.pid)
        finally:
            adapter.stop()


def _sample(process: psutil.Process) -> tuple[int, int]:
    return process.memory_info().rss, process.num_fds()


async def test_a_hundred_thousand_calls_leave_rss_and_fds_flat(
    processes: tuple[str, psutil.Process, psutil.Process],
) -> None:
    address, agent, adapter = processes
    payload = shim_pb2.StatsRequest(id=FIXTURE.request_id).SerializeToString()
    meta = stats_metadata("k8s.io")
    usage = int(FIXTURE.file("memory", "memory.current"))
    samples: dict[str, list[tuple[int, int]]] = {"agent": [], "adapter": []}
    made = 0

    async def caller(client: Client, quota: int) -> None:
        nonlocal made
        for _ in range(quota):
            raw = await client.call(TASK_SERVICE, "Stats", payload, timeout=10.0, metadata=meta)
            made += 1
            if made % 100 == 0:
                metrics = cri.decode_metrics(shim_pb2.StatsResponse.FromString(raw).stats)
                assert isinstance(metrics, v2.Metrics)
                assert metrics.memory.usage == usage

    async with await Client.connect(address) as client:
        for _ in range(CALLS // SAMPLE_EVERY):
            await asyncio.gather(*(caller(client, SAMPLE_EVERY // CALLERS) for _ in range(CALLERS)))
            samples["agent"].append(_sample(agent))
            samples["adapter"].append(_sample(adapter))
    assert made == CALLS // SAMPLE_EVERY * (SAMPLE_EVERY // CALLERS) * CALLERS
    for name, series in samples.items():
        rss = [r for r, _ in series]
        fds = [f for _, f in series]
        report = f"{name}: RSS MiB {[round(r / 2**20, 2) for r in rss]}, fds {fds}"
        print(report)  # shown with pytest -s: the numbers docs/benchmarks.md quotes
        assert max(rss[1:]) - rss[0] <= RSS_GROWTH, report
        assert max(fds) - min(fds) <= FD_DRIFT, report
