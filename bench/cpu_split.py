"""Where one end-to-end Stats call's time goes: the CPU each process on the path spends per call.

``python -m bench.cpu_split [--calls N] [--rounds R]`` (root; a real containerd 1.6 + runc, as bench.e2e)

The same four sides as bench.e2e (the runc shim; ``shimstats serve`` → guest agent; the proxy's serving
process → guest agent; that relay → an agent answering ready bytes), one caller, one call at a time. For
each side it reads the user and system CPU of every process on the path from /proc/PID/stat (all threads)
before and after R rounds of N calls, and prints each process's CPU per call beside the wall time per call.
The servers are found by their listening sockets (/proc/net/unix), the agent is the one the harness
started.

One caller waits for each answer, so the processes run one after another: when the CPU per call of the
processes on a path adds up to about its wall time, the path is its CPU, and a process's share is what
cutting its work would win. Compare the per-call CPU with bench.hops (the same work in a tight loop) and
bench.idle (the same work after the CPU has idled).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import print_rows
from bench.e2e import NAMES, FakeContainerdSide, Sides, sides
from shimstats.ttrpc import Client

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far, all its threads together."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def listener_pid(address: str) -> int:
    """The pid of the process holding the listening unix socket at ``address`` (unix://PATH), found through
    /proc/net/unix (the socket's inode) and the processes' fds. A shim that containerd started in a mount
    namespace of its own binds its socket under a different path there, with the same name."""
    path = address.removeprefix("unix://")
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table][1:]
    listening = [row for row in rows if len(row) == 8 and row[5] == "01"]
    inodes = {f"socket:[{row[6]}]" for row in listening if row[7] == path}
    if not inodes:
        inodes = {f"socket:[{row[6]}]" for row in listening if row[7].endswith("/" + Path(path).name)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                return int(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read
    raise RuntimeError(f"{address}: no process holds this listening socket")


async def split(side: FakeContainerdSide, pids: Sequence[int | None], calls: int, rounds: int) -> list[str]:
    """Wall µs per call, each process's CPU µs per call (user+system; "-" for none) and their sum, over
    ``rounds`` × ``calls`` calls."""
    await side(calls // 10)  # warm
    before = [cpu_seconds(pid) if pid else (0.0, 0.0) for pid in pids]
    started = time.perf_counter()
    for _ in range(rounds):
        await side(calls)
    wall = time.perf_counter() - started
    per_call = 1e6 / (calls * rounds)
    cells, cpu_sum = [f"{wall * per_call:.0f}"], 0.0
    for pid, (user_before, system_before) in zip(pids, before):
        if not pid:
            cells.append("-")
            continue
        user, system = cpu_seconds(pid)
        user, system = user - user_before, system - system_before
        cpu_sum += user + system
        cells.append(f"{user * per_call:.0f}+{system * per_call:.0f}")
    return [*cells, f"{cpu_sum * per_call:.0f}"]


async def measure(found: Sides, args: argparse.Namespace) -> None:
    rows = []
    agents = (None, found.agent_pid, found.agent_pid, listener_pid(found.ready_agent))
    for name, address, agent_pid in zip(NAMES, found.addresses, agents):
        side = FakeContainerdSide(await Client.connect(address), found.container)
        try:
            pids = [os.getpid(), listener_pid(address), agent_pid]
            rows.append([name, *await split(side, pids, args.calls, args.rounds)])
        finally:
            await side.client.close()
    print_rows(
        f"CPU per Stats call by process, one caller ({args.rounds} rounds of {args.calls} calls; µs)",
        ["side", "wall/call", "caller u+s", "server u+s", "agent u+s", "CPU sum/call"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000, help="calls per round and side")
    args = parser.parse_args(argv)
    with sides() as found:
        asyncio.run(measure(found, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
