"""End-to-end Stats latency: ours against the runc shim, on one live container, in one run.

``python -m bench.e2e [--rounds R] [--calls N]`` (root: it starts a real containerd 1.6 + runc)

A = the runc shim's own Task/Stats for a busybox container (50 MiB of page cache written and read back).
B = the same request to ``shimstats serve``, which asks a guest agent (``python -m guest_agent``) reading
that container's live cgroup v1 under /sys/fs/cgroup, translates, and answers.
Both are called by the fake containerd client (shimstats.fake_containerd.call_stats: namespace metadata, a
deadline, the Any decoded by its type URL and CRI's figures derived), one call at a time, each over one
kept connection as containerd keeps it, alternating A B A B in rounds. Prints median, p99 and ours/runc.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from bench.common import Summary, adapter_process, alternate, print_rows, ratio, runc_container
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


async def measure(
    runc_address: str, ours_address: str, container: Container, args: argparse.Namespace
) -> None:
    runc = FakeContainerdSide(await Client.connect(runc_address), container)
    ours = FakeContainerdSide(await Client.connect(ours_address), container)
    try:
        a, b = await runc.once(), await ours.once()
        print(
            f"CRI working set: runc shim {a.memory.working_set_bytes if a.memory else None}, "
            f"ours {b.memory.working_set_bytes if b.memory else None}; types {a.type_url} / {b.type_url}"
        )
        await runc(args.calls // 10)  # warm both
        await ours(args.calls // 10)
        pooled = await alternate([runc, ours], args.rounds, args.calls // args.rounds)
    finally:
        await runc.client.close()
        await ours.client.close()
    theirs_summary, ours_summary = Summary.of(pooled[0]), Summary.of(pooled[1])
    ratios = [
        f"{ratio(getattr(ours_summary, key), getattr(theirs_summary, key)):.2f}"
        for key in ("median_us", "p99_us", "mean_us")
    ]
    print_rows(
        f"End-to-end Stats, one caller, {args.rounds} rounds alternating A B (µs; the last row unitless)",
        ["side", "calls", "p50", "p99", "mean"],
        [_row("runc shim (A)", theirs_summary), _row("ours (B)", ours_summary), ["ours/runc", "", *ratios]],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per side, over all rounds")
    args = parser.parse_args(argv)
    with runc_container() as container, short_tmp() as directory:
        cgroup = f"/{container.namespace}/{container.id}"
        agent_args = ["--container", f"{container.id}={cgroup}", "--log-level", "warning"]
        with AgentProcess(directory, agent_args) as agent, adapter_process(directory, agent.address) as ours:
            asyncio.run(measure(f"unix://{container.shim_socket}", ours, container, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
