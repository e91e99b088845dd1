"""The floor of one Python ttrpc hop: Task/Stats answered with bytes ready in advance, no work in between.

``python -m bench.roundtrip [--calls N] [--rounds R]``

The fake containerd client (shimstats.fake_containerd.call_stats, as bench.e2e calls both shims) asks a
ttrpc server whose Stats handler returns a StatsResponse built before the run, so a call costs only the
client, the sockets, the event loops and the framing. Three sides, alternated in rounds: that server in
the caller's own process (one event loop, no process switch); the same in a process of its own (``python
-m bench.roundtrip --serve``, as the adapter and the agent each run); and ``shimstats serve`` (the adapter,
as bench.e2e runs it) in front of that process answering StatsContainer with a kata answer read once from
a captured cgroup v1 tree: the adapter's whole cost (its hop, the agent hop, decode, translate) with an
agent that does no work. Our Stats path has two hops in series (caller → adapter → agent) before any
cgroup file is read: this is what they cost at the least.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import PAGECACHE_V1, Summary, adapter_process, alternate, print_rows
from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from guest_agent.wire import AGENT_SERVICE
from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.fake_containerd import call_stats
from shimstats.ttrpc import CallContext, Client, Server
from shimstats.ttrpc.probe import listening
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import REPO, short_tmp

CALL_TIMEOUT = 5.0


def _canned() -> bytes:
    """A StatsResponse as our adapter answers for a v1 container (usage and memory.stat figures set)."""
    memory = metrics_pb2.MemoryStat(cache=1 << 20, total_inactive_file=1 << 19, rss=1 << 22)
    memory.usage.usage = 50 << 20
    metrics = metrics_pb2.Metrics(memory=memory)
    return shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics)).SerializeToString()


def _kata_answer() -> bytes:
    """A StatsContainerResponse for the captured page-cache container (the tree bench.throughput copies)."""
    meta = json.loads((PAGECACHE_V1 / "meta.json").read_text())
    reader = CgroupReader(detect_layout(str(PAGECACHE_V1 / "cgroup")), meminfo=str(PAGECACHE_V1 / "meminfo"))
    try:
        return to_response(reader.read(meta["container_path"])).SerializeToString()
    finally:
        reader.close()


def _ready(answer: bytes) -> Callable[[bytes, CallContext], bytes]:
    def handler(payload: bytes, ctx: CallContext) -> bytes:
        return answer

    return handler


def _server() -> Server:
    """Task/Stats and the agent's StatsContainer, each answering its ready bytes."""
    server = Server()
    server.register(TASK_SERVICE, {"Stats": _ready(_canned())})
    server.register(AGENT_SERVICE, {"StatsContainer": _ready(_kata_answer())})
    return server


async def _serve(address: str) -> None:
    await _server().serve(address)


class _Side:
    """One caller timing ``call_stats`` over one kept connection."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def __call__(self, calls: int) -> list[float]:
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await call_stats(self.client, "c", namespace="k8s.io", timeout=CALL_TIMEOUT)
            samples.append(time.perf_counter() - started)
        return samples


async def measure(directory: Path, other_process: str, adapter: str, args: argparse.Namespace) -> None:
    here = f"unix://{directory}/here.sock"
    server = _server()
    await server.start(here)
    sides: list[_Side] = []
    try:
        for address in (here, other_process, adapter):
            side = _Side(await Client.connect(address))
            await side(args.calls // 10)  # warm up
            sides.append(side)
        pooled = await alternate(sides, args.rounds, args.calls // args.rounds)
    finally:
        for side in sides:
            await side.client.close()
        await server.close(grace=0)
    rows = []
    names = ("same process", "other process", "adapter → ready agent")
    for name, samples in zip(names, pooled):
        s = Summary.of(samples)
        rows.append([name, s.count, s.median_us, s.p99_us, s.mean_us])
    print_rows(
        f"One ttrpc hop with a ready answer, one caller, {args.rounds} rounds alternating (µs)",
        ["server", "calls", "p50", "p99", "mean"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per server, over all rounds")
    parser.add_argument("--serve", metavar="ADDR", help=argparse.SUPPRESS)  # the other process's role
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    with short_tmp() as directory:
        path = directory / "other.sock"
        argv_ = [sys.executable, "-m", "bench.roundtrip", "--serve", f"unix://{path}"]
        process = subprocess.Popen(argv_, cwd=REPO, stdin=subprocess.DEVNULL)
        try:
            while not listening(str(path)):
                if process.poll() is not None:
                    raise RuntimeError(f"{' '.join(argv_)} exited with {process.returncode}")
                time.sleep(0.02)
            with adapter_process(directory, f"unix://{path}") as adapter:
                asyncio.run(measure(directory, f"unix://{path}", adapter, args))
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
