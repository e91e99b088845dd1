"""The guest agent's footprint: start to first answer, RSS after start and after many calls, idle CPU.

``python -m bench.footprint [--calls N] [--starts K] [--idle S] [--cgroupfs-root DIR --path /CGROUP]``

The agent runs as it would in a guest (``python -m guest_agent``, started by guest_agent.bench's helpers)
reading the live cgroup v1 root of this machine by default. Start to first answer is the time from spawning
the process to the first StatsContainer answer (median of K starts). RSS is VmRSS after that first answer
and after N more calls over one connection. Idle CPU is the user+system time the process uses while nobody
calls it for S seconds (with a connection left open, as the adapter keeps one).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

import psutil

from bench.common import print_rows
from guest_agent.bench import agent_process, first_answer
from shimstats._proto.kata import agent_pb2

TARGETS = {"start": "≤ 300 ms", "rss": "≤ 30 MB", "growth": "< 1 MB", "idle": "none"}


def one_start(args: argparse.Namespace, payload: bytes, calls: int) -> dict[str, float]:
    directory = tempfile.mkdtemp(prefix="ss-fp-", dir="/tmp")
    address = f"unix://{directory}/agent.sock"
    started = time.perf_counter()
    proc = agent_process(args, address)
    try:
        client = first_answer(address, proc, payload)
        result = {"start_ms": (time.perf_counter() - started) * 1e3}
        agent = psutil.Process(proc.pid)
        with client:
            result["rss_start_mib"] = agent.memory_info().rss / 2**20
            if calls:
                for _ in range(calls):
                    client.call("grpc.AgentService", "StatsContainer", payload)
                result["rss_after_mib"] = agent.memory_info().rss / 2**20
                before = agent.cpu_times()
                time.sleep(args.idle)
                after = agent.cpu_times()
                result["idle_cpu_ms"] = (after.user + after.system - before.user - before.system) * 1e3
                result["threads"] = agent.num_threads()
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cgroupfs-root", default="/sys/fs/cgroup")
    parser.add_argument("--path", default="/", help="cgroup path to read (default: the root, /)")
    parser.add_argument("--meminfo", default="/proc/meminfo")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idleness to watch")
    args = parser.parse_args(argv)
    payload = agent_pb2.StatsContainerRequest(container_id="bench").SerializeToString()
    starts = [one_start(args, payload, 0)["start_ms"] for _ in range(args.starts)]
    long_run = one_start(args, payload, args.calls)
    growth = long_run["rss_after_mib"] - long_run["rss_start_mib"]
    rows = [
        ["start to first answer (ms)", statistics.median(starts), f"max {max(starts):.1f}", TARGETS["start"]],
        ["RSS after first answer (MiB)", long_run["rss_start_mib"], "", TARGETS["rss"]],
        [f"RSS after {args.calls} calls (MiB)", long_run["rss_after_mib"], "", TARGETS["rss"]],
        ["RSS growth (MiB)", growth, "", TARGETS["growth"]],
        [f"CPU while idle {args.idle:g} s (ms)", long_run["idle_cpu_ms"], "", TARGETS["idle"]],
        ["threads", long_run["threads"], "", "1"],
    ]
    print_rows(
        f"Guest agent footprint ({args.cgroupfs_root}, cgroup {args.path}; {args.starts} starts)",
        ["measure", "value", "", "target"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
