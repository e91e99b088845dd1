"""End-to-end Stats latency: ours against the runc shim, on one live container, in one run.

``python -m bench.e2e [--rounds R] [--calls N]`` (root: it starts a real containerd 1.6 + runc)

A = the runc shim's own Task/Stats for a busybox container (50 MiB of page cache written and read back).
B = the same request to ``shimstats serve``, which asks a guest agent (``python -m guest_agent``) reading
that container's live cgroup v1 under /sys/fs/cgroup, translates, and answers.
C = the same request to the proxy shim's serving process (the relay ``start`` forks, on threads), in front of
that container's runc shim as in a deployment, answering Stats from the same agent.
D = C's relay in front of an agent that does no work: it answers StatsContainer with the bytes of this
container's answer read once at its start (bench.roundtrip's ready agent). D is the floor of our path, two
Python hops and the translation; C − D is what reading the cgroup and spelling the answer cost in place.
All are called by the fake containerd client (shimstats.fake_containerd.call_stats: namespace metadata, a
deadline, the Any decoded by its type URL and CRI's figures derived), one call at a time, each over one
kept connection as containerd keeps it, alternating A B C D in rounds. Prints median, p99 and each/runc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from bench.common import Summary, adapter_process, alternate, print_rows, proxy_process, ratio, runc_container
from bench.roundtrip import ready_agent
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.ttrpc import Client
from tests.containerd_env import Container
from tests.integration.harness import AgentProcess, short_tmp

CALL_TIMEOUT = 5.0
NAMES = ("runc shim (A)", "serve (B)", "proxy (C)", "floor (D)")


class Sides(NamedTuple):
    container: Container
    agent_pid: int
    ready_agent: str
    """The ready agent's address (D's agent)."""
    addresses: list[str]
    """A, B, C and D's, in NAMES' order."""


class FakeContainerdSide:
    """One side: the fake containerd client calling Stats for one container, one call at a time."""

    def __init__(self, client: Client, container: Container) -> None:
        self.client = client
        self.container = container

    async def once(self) -> StatsResult:
        container = self.container
        return await call_stats(
            self.client, container.id, namespace=container.namespace, timeout=CALL_TIMEOUT
        )

    async def __call__(self, calls: int) -> list[float]:
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            await self.once()
            samples.append(time.perf_counter() - started)
        return samples


def _row(name: str, summary: Summary) -> list[object]:
    return [name, summary.count, summary.median_us, summary.p99_us, summary.mean_us]


async def measure(addresses: Sequence[str], container: Container, args: argparse.Namespace) -> None:
    sides = [FakeContainerdSide(await Client.connect(address), container) for address in addresses]
    try:
        results = [await side.once() for side in sides]
        sets = [r.memory.working_set_bytes if r.memory else None for r in results]
        print(f"CRI working set: {', '.join(NAMES)}: {sets}; types {[r.type_url for r in results]}")
        for side in sides:
            await side(args.calls // 10)  # warm every side
        pooled = await alternate(sides, args.rounds, args.calls // args.rounds)
    finally:
        for side in sides:
            await side.client.close()
    theirs = Summary.of(pooled[0])
    rows = [_row(NAMES[0], theirs)]
    for name, samples in zip(NAMES[1:], pooled[1:]):
        ours = Summary.of(samples)
        rows.append(_row(name, ours))
        keys = ("median_us", "p99_us", "mean_us")
        ratios = [f"{ratio(getattr(ours, key), getattr(theirs, key)):.2f}" for key in keys]
        rows.append([f"{name[:-4]}/runc", "", *ratios])
    print_rows(
        f"End-to-end Stats, one caller, {args.rounds} rounds alternating A B C D (µs; ratio rows unitless)",
        ["side", "calls", "p50", "p99", "mean"],
        rows,
    )


@contextlib.contextmanager
def sides() -> Iterator[Sides]:
    """The live busybox container and the four sides (module doc): its runc shim, ``shimstats serve`` and
    the proxy's serving process, both in front of one agent reading its cgroup, and another proxy serving
    process in front of a ready agent."""
    with runc_container() as container, short_tmp() as directory:
        cgroup = f"/{container.namespace}/{container.id}"
        agent_args = ["--container", f"{container.id}={cgroup}", "--log-level", "warning"]
        runc = f"unix://{container.shim_socket}"
        with (
            AgentProcess(directory, agent_args) as agent,
            adapter_process(directory, agent.address) as serve,
            proxy_process(directory, runc, agent.address, container.namespace) as proxy,
            ready_agent(directory / "ready.sock", cgroup) as ready,
            proxy_process(directory, runc, ready, container.namespace, name="floor") as floor,
        ):
            assert agent.process is not None
            yield Sides(container, agent.process.pid, ready, [runc, serve, proxy, floor])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per side, over all rounds")
    args = parser.parse_args(argv)
    with sides() as found:
        asyncio.run(measure(found.addresses, found.container, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
