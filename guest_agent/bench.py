"""Benchmarks of the guest agent (not tests: numbers to compare against the targets, never asserted).

``python -m guest_agent.bench [--cgroupfs-root PATH --path /CGROUP --meminfo PATH] [--calls N] [--json]``

Measures, on the live cgroups by default (the root cgroup, ``/``) or on a captured tree:
- parse: guest_agent.parse.parse_flat_keyed of that cgroup's memory.stat (target: well under 50 µs);
- read: CgroupReader.read + kata spelling + serialisation, in-process: the mean over half a second, and the
  fastest of 30 batches of 200 (``read_and_encode_min_us``, the figure that stays put on a shared machine);
- call: StatsContainer round trips through a real ``python -m guest_agent`` process over a unix socket
  (p50/p99 and calls per second from one connection);
- start: process start to the first answered StatsContainer (target: < 300 ms);
- rss: the agent process's resident memory after all calls (target: < 30 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from guest_agent.kata import to_response
from guest_agent.layout import detect_layout
from guest_agent.parse import parse_flat_keyed
from guest_agent.reader import CgroupReader
from guest_agent.wire import AGENT_SERVICE
from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc import SyncClient, TransportError


def _per_call_us(fn: Callable[[], object], seconds: float = 0.5) -> float:
    """Mean µs per call of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        calls += 100
    return elapsed / calls * 1e6


def min_batch_us(fn: Callable[[], object], batches: int = 30, size: int = 200) -> float:
    """µs per call of ``fn`` in the fastest of ``batches`` batches of ``size`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(size):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / size * 1e6


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def agent_process(args: argparse.Namespace, address: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "guest_agent", "--listen", address, "--cgroupfs-root", args.cgroupfs_root]
    cmd += ["--meminfo", args.meminfo, "--container", f"bench={args.path}", "--log-level", "warning"]
    return subprocess.Popen(cmd)


def first_answer(address: str, proc: subprocess.Popen[bytes], payload: bytes) -> SyncClient:
    """Connect and get one StatsContainer answer as soon as the agent listens (polling every 1 ms)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            client = SyncClient(address, timeout=5)
        except (TransportError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.001)
            continue
        client.call(AGENT_SERVICE, "StatsContainer", payload)
        return client


def run(args: argparse.Namespace) -> dict[str, float]:
    """Every measurement; keys end in their unit."""
    layout = detect_layout(args.cgroupfs_root)
    reader = CgroupReader(layout, meminfo=args.meminfo)
    memory = layout.controllers.get("memory")
    results: dict[str, float] = {}
    if memory is not None:
        stat_path = os.path.join(memory.dir_for(args.path), "memory.stat")
        text = Path(stat_path).read_text()
        results["parse_memory_stat_us"] = _per_call_us(lambda: parse_flat_keyed(text, stat_path))
        results["memory_stat_lines"] = text.count("\n")
    read_and_encode = lambda: to_response(reader.read(args.path)).SerializeToString()  # noqa: E731
    results["read_and_encode_us"] = _per_call_us(read_and_encode)
    results["read_and_encode_min_us"] = min_batch_us(read_and_encode)
    reader.close()

    sock_dir = tempfile.mkdtemp(prefix="ga-bench-", dir="/tmp")
    address = f"unix://{sock_dir}/agent.sock"
    payload = agent_pb2.StatsContainerRequest(container_id="bench").SerializeToString()
    started = time.perf_counter()
    proc = agent_process(args, address)
    try:
        client = first_answer(address, proc, payload)
        results["start_to_first_answer_ms"] = (time.perf_counter() - started) * 1e3
        with client:
            samples = []
            begin = time.perf_counter()
            for _ in range(args.calls):
                t0 = time.perf_counter()
                client.call(AGENT_SERVICE, "StatsContainer", payload)
                samples.append(time.perf_counter() - t0)
            total = time.perf_counter() - begin
        samples.sort()
        results["call_p50_us"] = statistics.median(samples) * 1e6
        results["call_p99_us"] = samples[int(len(samples) * 0.99) - 1] * 1e6
        results["calls_per_second"] = args.calls / total
        results["agent_rss_mib"] = _rss_kib(proc.pid) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(sock_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guest_agent.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cgroupfs-root", default="/sys/fs/cgroup")
    parser.add_argument("--path", default="/", help="cgroup path to read (default: the root, /)")
    parser.add_argument("--meminfo", default="/proc/meminfo")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        print(json.dumps({k: round(v, 1) for k, v in results.items()}))
    else:
        for key, value in results.items():
            print(f"{key:28} {value:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
