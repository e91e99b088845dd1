"""The floor of one Python ttrpc hop: Task/Stats answered with bytes ready in advance, no work in between.

``python -m bench.roundtrip [--calls N] [--rounds R] [--callers N]``

The fake containerd client (shimstats.fake_containerd.call_stats, as bench.e2e calls both shims) asks a
ttrpc server whose Stats handler returns a StatsResponse built before the run, so a call costs only the
client, the sockets, the event loops and the framing. Four sides, alternated in rounds: that server in
the caller's own process (one event loop, no process switch); the same in a process of its own (``python
-m bench.roundtrip --serve``, as the adapter and the agent each run); ``shimstats serve`` (the adapter,
as bench.e2e runs it) in front of that process answering StatsContainer with a kata answer read once from
a captured cgroup v1 tree: the adapter's whole cost (its hop, the agent hop, decode, translate) with an
agent that does no work; and the same adapter on threads (ThreadServer, BlockingAgentClient and
stats_response, as the proxy's serving process answers Stats; ``--serve-threaded``). Our Stats path has
two hops in series (caller → adapter → agent) before any cgroup file is read: this is what they cost at
the least. ``--callers N`` makes N concurrent calls on each connection instead (bench.load, rates too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bench.common import PAGECACHE_V1, Summary, adapter_process, alternate, print_rows
from bench.load import LoadSide
from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.reader import CgroupReader
from guest_agent.wire import AGENT_SERVICE
from shimstats import cri
from shimstats._proto.cgroups.v1 import metrics_pb2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.agent_blocking import BlockingAgentClient
from shimstats.fake_containerd import call_stats
from shimstats.stats_answer import stats_response, validate_id
from shimstats.translate import resolve_format
from shimstats.ttrpc import CallContext, Client, Server
from shimstats.ttrpc.address import parse_address
from shimstats.ttrpc.probe import listening
from shimstats.ttrpc.threads import ThreadServer
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import REPO, short_tmp

CALL_TIMEOUT = 5.0


def _canned() -> bytes:
    """A StatsResponse as our adapter answers for a v1 container (usage and memory.stat figures set)."""
    memory = metrics_pb2.MemoryStat(cache=1 << 20, total_inactive_file=1 << 19, rss=1 << 22)
    memory.usage.usage = 50 << 20
    metrics = metrics_pb2.Metrics(memory=memory)
    return shim_pb2.StatsResponse(stats=cri.encode_metrics(metrics)).SerializeToString()


def _kata_answer(cgroup: str | None = None) -> bytes:
    """A StatsContainerResponse read once: of the live ``cgroup`` under /sys/fs/cgroup, or else of the
    captured page-cache container (the tree bench.throughput copies)."""
    root, meminfo = "/sys/fs/cgroup", "/proc/meminfo"
    if cgroup is None:
        cgroup = json.loads((PAGECACHE_V1 / "meta.json").read_text())["container_path"]
        root, meminfo = str(PAGECACHE_V1 / "cgroup"), str(PAGECACHE_V1 / "meminfo")
    reader = CgroupReader(detect_layout(root), meminfo=meminfo)
    try:
        return to_response(reader.read(cgroup)).SerializeToString()
    finally:
        reader.close()


def _ready(answer: bytes) -> Callable[[bytes, CallContext], bytes]:
    def handler(payload: bytes, ctx: CallContext) -> bytes:
        return answer

    return handler


def _server(cgroup: str | None = None) -> Server:
    """Task/Stats and the agent's StatsContainer (``cgroup``'s answer: see _kata_answer), each answering its
    ready bytes."""
    server = Server()
    server.register(TASK_SERVICE, {"Stats": _ready(_canned())})
    server.register(AGENT_SERVICE, {"StatsContainer": _ready(_kata_answer(cgroup))})
    return server


async def _serve(address: str, cgroup: str | None) -> None:
    await _server(cgroup).serve(address)


def _serve_threaded(address: str, agent_address: str) -> None:
    """The adapter on threads: Stats asks the agent on a blocking connection and translates (v1 Metrics)."""
    agent = BlockingAgentClient(parse_address(agent_address))
    output = resolve_format("v1")

    def stats(payload: bytes, ctx: CallContext) -> bytes:
        container_id = shim_pb2.StatsRequest.FromString(payload).id
        validate_id(container_id)
        answer = agent.stats_container(container_id, deadline=ctx.deadline)
        return stats_response(container_id, answer, output).SerializeToString()

    server = ThreadServer()
    server.register(TASK_SERVICE, {"Stats": stats})
    server.start(address)
    threading.Event().wait()  # until SIGTERM ends the process


@contextlib.contextmanager
def _process(path: Path, *args: str) -> Iterator[str]:
    """``python -m bench.roundtrip ARGS`` serving at ``path``; yields its address once it listens."""
    argv = [sys.executable, "-m", "bench.roundtrip", *args]
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        while not listening(str(path)):
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}")
            time.sleep(0.02)
        yield f"unix://{path}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def ready_agent(path: Path, cgroup: str | None = None) -> Iterator[str]:
    """An agent that does no work, serving at ``path``: StatsContainer answered with the bytes of one answer
    read at its start (the live ``cgroup``'s, or the captured page-cache container's); yields its address."""
    answer = ["--answer-cgroup", cgroup] if cgroup is not None else []
    with _process(path, "--serve", f"unix://{path}", *answer) as address:
        yield address


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


async def measure(directory: Path, others: Sequence[str], args: argparse.Namespace) -> None:
    here = f"unix://{directory}/here.sock"
    server = _server()
    await server.start(here)
    clients: list[Client] = []
    sides: list[_Side | LoadSide] = []
    try:
        for address in (here, *others):
            clients.append(await Client.connect(address))
            side = _Side(clients[-1]) if args.callers == 1 else LoadSide(clients[-1], ["c"], args.callers)
            await side(args.calls // 10)  # warm up
            sides.append(side)
        pooled = await alternate(sides, args.rounds, args.calls // args.rounds)
    finally:
        for client in clients:
            await client.close()
        await server.close(grace=0)
    rows = []
    names = ("same process", "other process", "adapter → ready agent", "threaded adapter → ready agent")
    for name, side, samples in zip(names, sides, pooled):
        s = Summary.of(samples)
        rate = statistics.median(side.rates[1:]) if isinstance(side, LoadSide) else 1e6 / s.mean_us
        rows.append([name, s.count, s.median_us, s.p99_us, s.mean_us, rate])
    print_rows(
        f"One ttrpc hop with a ready answer, {args.callers} caller(s) on one connection, {args.rounds} "
        "rounds alternating (µs; calls/s: the median round's)",
        ["server", "calls", "p50", "p99", "mean", "calls/s"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10_000, help="calls per server, over all rounds")
    parser.add_argument("--callers", type=int, default=1, help="concurrent calls per connection")
    parser.add_argument("--serve", metavar="ADDR", help=argparse.SUPPRESS)  # the other process's role
    parser.add_argument("--answer-cgroup", help=argparse.SUPPRESS)  # --serve's answer: this live cgroup's
    parser.add_argument("--serve-threaded", nargs=2, metavar=("ADDR", "AGENT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(args.serve, args.answer_cgroup))
        return 0
    if args.serve_threaded:
        _serve_threaded(*args.serve_threaded)
        return 0
    with short_tmp() as directory, contextlib.ExitStack() as stack:
        other = stack.enter_context(ready_agent(directory / "other.sock"))
        adapter = stack.enter_context(adapter_process(directory, other))
        threaded_path = directory / "threaded.sock"
        threaded = stack.enter_context(
            _process(threaded_path, "--serve-threaded", f"unix://{threaded_path}", other)
        )
        asyncio.run(measure(directory, (other, adapter, threaded), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
