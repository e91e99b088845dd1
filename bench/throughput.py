"""Stats per second through one adapter, and how a call's latency grows with the number of containers.

``python -m bench.throughput [--calls N] [--rounds R] [--runc] [--tree captured|live]``

Throughput: one guest agent (``python -m guest_agent``) reading a captured cgroup v1 tree with 100 copies of
one container (``--tree live``: 100 live cgroup v1 children, each with a process and its page cache, as an
agent reads kernfs in production), one adapter (``shimstats serve``) in front of it, and callers as
containerd makes them (one connection, 1, 16 and 256 concurrent calls, cycling over the 100 ids). With
``--runc`` the runc shim of a real busybox container is driven the same way in the same run, alternating,
and the ratio is printed (a runc shim serves one container, so all its calls ask for that one).

Scaling: for 1, 10, 100 and 1,000 containers, a fresh agent and adapter; the first sweep over every id
(each call discovers its cgroup by walking the tree) and then warm calls cycling over all ids.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator, Sequence

from bench.common import (
    PAGECACHE_V1,
    Summary,
    adapter_process,
    alternate,
    live_containers,
    many_containers,
    print_rows,
    ratio,
    runc_container,
)
from bench.load import Load, LoadSide, stats_load
from shimstats.ttrpc import Client
from tests.integration.harness import AgentProcess, short_tmp

CONCURRENCY = (1, 16, 256)
SCALING = (1, 10, 100, 1000)


@contextlib.contextmanager
def adapter_on_tree(containers: int, tree: str = "captured") -> Iterator[tuple[str, list[str]]]:
    """Agent + adapter over ``containers`` containers; yields (adapter address, ids). ``tree``: "captured"
    (copies of a captured cgroup v1 tree, found by discovery) or "live" (live cgroup v1 children, each
    with its own process and page cache, mapped with --container as an agent that knows its containers)."""
    with short_tmp() as directory, contextlib.ExitStack() as stack:
        if tree == "live":
            paths = stack.enter_context(live_containers(containers))
            ids = list(paths)
            agent_args = [f"--container={container_id}={path}" for container_id, path in paths.items()]
        else:
            ids = many_containers(PAGECACHE_V1, directory / "cgroup", containers)
            agent_args = [
                "--cgroupfs-root",
                str(directory / "cgroup"),
                "--meminfo",
                str(PAGECACHE_V1 / "meminfo"),
            ]
        with (
            AgentProcess(directory, [*agent_args, "--log-level", "warning"]) as agent,
            adapter_process(directory, agent.address) as address,
        ):
            yield address, ids


async def throughput(
    address: str, ids: Sequence[str], runc: tuple[str, str] | None, args: argparse.Namespace
) -> None:
    ours = await Client.connect(address)
    theirs = await Client.connect(runc[0]) if runc else None
    rows = []
    try:
        await stats_load(ours, ids, concurrency=16, calls=len(ids) * 5)  # discovery and file cache warm
        for concurrency in CONCURRENCY:
            per_round = max(concurrency, args.calls // args.rounds)
            sides = [LoadSide(ours, ids, concurrency)]
            if theirs is not None and runc is not None:
                sides.append(LoadSide(theirs, [runc[1]], concurrency))
            pooled = await alternate(sides, args.rounds, per_round)
            ours_rate = statistics.median(sides[0].rates)
            ours_latency = Summary.of(pooled[0])
            row: list[object] = [concurrency, ours_rate, ours_latency.median_us, ours_latency.p99_us]
            if len(sides) == 2:
                runc_rate = statistics.median(sides[1].rates)
                row += [runc_rate, Summary.of(pooled[1]).p99_us, f"{ratio(ours_rate, runc_rate):.2f}"]
            rows.append(row)
    finally:
        await ours.close()
        if theirs:
            await theirs.close()
    header = ["callers", "ours/s", "ours p50 µs", "ours p99 µs"]
    if runc:
        header += ["runc/s", "runc p99 µs", "ours/runc rate"]
    print_rows(
        f"Throughput: Stats through one adapter over {len(ids)} containers "
        f"({args.rounds} alternating rounds, {args.calls} calls per level and side; rate = median of rounds)",
        header,
        rows,
    )


async def scaling_point(address: str, ids: Sequence[str], warm_calls: int) -> list[object]:
    async with await Client.connect(address) as client:
        started = time.perf_counter()
        await stats_load(client, ids, concurrency=1, calls=len(ids))
        cold = (time.perf_counter() - started) / len(ids)
        warm: Load = await stats_load(client, ids, concurrency=1, calls=max(warm_calls, len(ids)))
        busy: Load = await stats_load(client, ids, concurrency=16, calls=max(warm_calls, len(ids)))
    summary = Summary.of(warm.samples)
    return [len(ids), cold * 1e6, summary.median_us, summary.p99_us, busy.rate]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per concurrency level and side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per level")
    parser.add_argument("--scaling-calls", type=int, default=3000, help="warm calls per scaling point")
    parser.add_argument("--runc", action="store_true", help="compare with a real runc shim (needs root)")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument(
        "--tree",
        choices=("captured", "live"),
        default="captured",
        help="what the agent reads for the throughput table: copies of a captured tree (regular files, "
        "checked per read; the default, as in earlier runs) or 100 live cgroup v1 children (kernfs, as in "
        "production; root)",
    )
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        runc = None
        if args.runc:
            container = stack.enter_context(runc_container())
            runc = (f"unix://{container.shim_socket}", container.id)
        address, ids = stack.enter_context(adapter_on_tree(100, args.tree))
        asyncio.run(throughput(address, ids, runc, args))

    if not args.skip_scaling:
        rows = []
        for count in SCALING:
            with adapter_on_tree(count) as (address, ids):
                rows.append(asyncio.run(scaling_point(address, ids, args.scaling_calls)))
        print_rows(
            "Scaling: one adapter, N containers (cold = first sweep, discovery included; warm = cycling "
            "over all N, one caller; rate = 16 callers)",
            ["containers", "cold µs/call", "warm p50 µs", "warm p99 µs", "16 callers/s"],
            rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
