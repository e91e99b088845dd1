"""End-to-end Stats latency: ours against the runc shim, on one live container, in one run.

``python -m bench.e2e [--rounds R] [--calls N]`` (root: it starts a real containerd 1.6 + runc)

A = the runc shim's own Task/Stats for a busybox container (50 MiB of page cache written and read back).
B = the same request to ``shimstats serve``, which asks a guest agent (``python -m guest_agent``) reading
that container's live cgroup v1 under /sys/fs/cgroup, translates, and answers.
C = the same request to the proxy shim's serving process (the relay ``start`` forks, on threads), in front of
that container's runc shim as in a deployment, answering Stats from the same agent.
Both are called by the fake containerd client (shimstats.fake_containerd.call_stats: namespace metadata, a
deadline, the Any decoded by its type URL and CRI's figures derived), one call at a time, each over one
kept connection as containerd keeps it, alternating A B C in rounds. Prints median, p99 and each/runc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence

from bench.common import Summary, adapter_process, alternate, print_rows, proxy_process, ratio, runc_container
from shimstats.fake_containerd import StatsResult, call_stats
from shimstats.ttrpc import Client
from tests.containerd_env import Container
from tests.integration.harness import AgentProcess, short_tmp

CALL_TIMEOUT = 5.0


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
        print(f"CRI working set: runc shim, serve, proxy: {sets}; types {[r.type_url for r in results]}")
        for side in sides:
            await side(args.calls // 10)  # warm every side
        pooled = await alternate(sides, args.rounds, args.calls // args.rounds)
    finally:
        for side in sides:
            await side.client.close()
    theirs = Summary.of(pooled[0])
    rows = [_row("runc shim (A)", theirs)]
    for name, samples in zip(("serve (B)", "proxy (C)"), pooled[1:]):
        ours = Summary.of(samples)
        rows.append(_row(name, ours))
        keys = ("median_us", "p99_us", "mean_us")
        ratios = [f"{ratio(getattr(ours, key), getattr(theirs, key)):.2f}" for key in keys]
        rows.append([f"{name[:-4]}/runc", "", *ratios])
    print_rows(
        f"End-to-end Stats, one caller, {args.rounds} rounds alternating A B C (µs; ratio rows unitless)",
        ["side", "calls", "p50", "p99", "mean"],
        rows,
    )


@contextlib.contextmanager
def three_sides() -> Iterator[tuple[Container, int, list[str]]]:
    """The live busybox container, the agent's pid, and the three sides' addresses: its runc shim,
    ``shimstats serve`` and the proxy's serving process, both in front of one agent reading its cgroup."""
    with runc_container() as container, short_tmp() as directory:
        cgroup = f"/{container.namespace}/{container.id}"
        agent_args = ["--container", f"{container.id}={cgroup}", "--log-level", "warning"]
        runc = f"unix://{container.shim_socket}"
        with (
            AgentProcess(directory, agent_args) as agent,
            adapter_process(directory, agent.address) as serve,
            proxy_process(directory, runc, agent.address, container.namespace) as proxy,
        ):
            assert agent.process is not None
            yield container, agent.process.pid, [runc, serve, proxy]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per side, over all rounds")
    args = parser.parse_args(argv)
    with three_sides() as (container, _agent_pid, addresses):
        asyncio.run(measure(addresses, container, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
