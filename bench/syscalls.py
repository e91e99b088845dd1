"""System calls per Stats call of the guest agent and ``shimstats serve``, counted by ``perf stat``.

``python -m bench.syscalls [--calls N] [--callers C] [--path /CGROUP]`` (needs perf and root)

The agent and the adapter run as in ``bench.instructions`` (plainly, both); C concurrent callers on one
connection make N Stats calls after a warm-up, while ``perf stat -p`` counts each process's sendto,
recvfrom and epoll_wait calls and all its system calls. Callgrind's instruction counts see user space
only; a batched send shows here. The counts depend a little on timing (how many requests one read finds),
so on the load: less than wall-clock times, more than instructions.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Sequence
from pathlib import Path

from bench.instructions import _agent_argv, _stop, _wait_for, concurrently
from shimstats.fake_containerd import call_stats
from shimstats.ttrpc import Client
from tests.integration.harness import CLI

WARM_UP = 200
EVENTS = {
    "sendto": "syscalls:sys_enter_sendto",
    "recvfrom": "syscalls:sys_enter_recvfrom",
    "epoll_wait": "syscalls:sys_enter_epoll_wait",
    "all": "raw_syscalls:sys_enter",
}


def _counts(out: Path) -> dict[str, int]:
    """Event name → count from ``perf stat -x ,`` output."""
    by_event = {event: name for name, event in EVENTS.items()}
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and fields[2] in by_event:
            counts[by_event[fields[2]]] = int(fields[0])
    return counts


def _perf_stat(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """``perf stat`` counting EVENTS of process ``pid`` into ``out`` until it gets SIGINT."""
    events = ",".join(EVENTS.values())
    return subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", events, "-p", str(pid)])


async def _calls(address: str, calls: int, callers: int, pids: dict[str, int], root: Path) -> None:
    client = await Client.connect(address, timeout=60)

    def stats() -> Awaitable[object]:
        return call_stats(client, "bench", namespace="k8s.io", timeout=60)

    try:
        await concurrently(WARM_UP, callers, stats)
        counters = [_perf_stat(pid, root / f"{name}.perf") for name, pid in pids.items()]
        await asyncio.sleep(0.5)  # perf attaches
        await concurrently(calls, callers, stats)
        for counter in counters:
            counter.send_signal(signal.SIGINT)
            counter.wait(timeout=30)
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.syscalls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=1, help="concurrent callers on one connection")
    parser.add_argument("--path", default="/", help="cgroup the agent reads (default: the root, /)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sys-", dir="/tmp") as directory:
        root = Path(directory)
        agent_address = f"unix://{root}/agent.sock"
        agent = subprocess.Popen(_agent_argv(agent_address, args.path))
        try:
            _wait_for(root / "agent.sock", agent)
            address = f"unix://{root}/adapter.sock"
            argv_ = [*CLI, "--log-level", "warning", "serve", "--listen", address, "--agent", agent_address]
            adapter = subprocess.Popen(argv_)
            try:
                _wait_for(root / "adapter.sock", adapter)
                pids = {"agent": agent.pid, "adapter": adapter.pid}
                asyncio.run(_calls(address, args.calls, args.callers, pids, root))
            finally:
                _stop(adapter)
        finally:
            _stop(agent)
        for name in ("agent", "adapter"):
            counts = _counts(root / f"{name}.perf")
            per_call = " ".join(f"{key} {counts.get(key, 0) / args.calls:.2f}" for key in EVENTS)
            print(f"{name}: per call ({args.calls} calls, {args.callers} callers): {per_call}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
