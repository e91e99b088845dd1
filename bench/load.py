"""Drive Task/Stats at a server the way containerd does: one connection, many concurrent callers.

containerd keeps one ttrpc connection per shim and its metrics collector asks for every task of that shim
at once, so concurrency here means concurrent calls multiplexed on one connection. The callers send the
request containerd sends (namespace metadata, a deadline) and keep the raw answer (decoding it is the
client's cost, the same for every server measured, and this client shares the 2 cores with the servers).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.fake_containerd import stats_metadata
from shimstats.ttrpc import Client
from shimstats.wire import TASK_SERVICE

__all__ = ["Load", "LoadSide", "stats_load"]

CALL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Load:
    """What one load run measured: per-call latencies (s), wall time (s), and the calls per second."""

    samples: list[float]
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.samples) / self.elapsed


async def stats_load(
    client: Client, ids: Sequence[str], *, concurrency: int, calls: int, namespace: str = "k8s.io"
) -> Load:
    """``calls`` Stats calls over ``ids`` (round robin) from ``concurrency`` callers on ``client``."""
    payloads = [shim_pb2.StatsRequest(id=i).SerializeToString() for i in ids]
    metadata = stats_metadata(namespace)
    samples: list[float] = []
    next_call = 0

    async def caller() -> None:
        nonlocal next_call
        while next_call < calls:
            payload = payloads[next_call % len(payloads)]
            next_call += 1
            started = time.perf_counter()
            await client.call(TASK_SERVICE, "Stats", payload, timeout=CALL_TIMEOUT, metadata=metadata)
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Load(samples, time.perf_counter() - started)


class LoadSide:
    """One side of an A/B comparison (bench.common.alternate): each round is one stats_load run."""

    def __init__(self, client: Client, ids: Sequence[str], concurrency: int) -> None:
        self.client = client
        self.ids = ids
        self.concurrency = concurrency
        self.rates: list[float] = []
        """Calls per second of every round so far."""

    async def __call__(self, calls: int) -> list[float]:
        load = await stats_load(self.client, self.ids, concurrency=self.concurrency, calls=calls)
        self.rates.append(load.rate)
        return load.samples
