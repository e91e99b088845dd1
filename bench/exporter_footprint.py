"""The exporter's footprint, for the DaemonSet's requests and limits: RSS and CPU per scrape.

``python -m bench.exporter_footprint [--containers N] [--scrapes K] [--interval S] [--idle S]``

A real guest agent (``python -m guest_agent``) reads a real child cgroup of this machine (cgroup v1,
created and removed here, holding a process that wrote and re-read page cache) under N container ids;
``shimstats exporter`` serves those N containers and is scraped K times over HTTP, S seconds apart, as a
Prometheus would. Reported: the exporter's RSS after start, its peak RSS over the scrapes (VmHWM), its CPU
time per scrape (user + system over all scrapes / K) and its CPU time while nobody scrapes. Root only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from bench.common import print_rows
from tests.integration.harness import CLI, REPO, AgentProcess, short_tmp

CGROUP_V1 = Path("/sys/fs/cgroup")
WORKLOAD = (
    "dd if=/dev/zero of={file} bs=1M count=64 conv=fsync 2>/dev/null; cat {file} >/dev/null; exec sleep 600"
)


@contextlib.contextmanager
def child_cgroup(directory: Path) -> Iterator[str]:
    """A child memory+cpuacct cgroup holding a page-cache workload; yields its path below the root."""
    name = f"ss-exporter-bench-{uuid.uuid4().hex[:8]}"
    made = [CGROUP_V1 / c / name for c in ("memory", "cpuacct")]
    for path in made:
        path.mkdir()
    command = WORKLOAD.format(file=directory / "cache.bin")
    joins = " ".join(f"echo $$ > {p}/cgroup.procs;" for p in made)
    workload = subprocess.Popen(["sh", "-c", f"{joins} {command}"])
    try:
        yield f"/{name}"
    finally:
        workload.kill()
        workload.wait()
        for path in made:
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> str:
    """The URL the exporter logs once it serves (its --log-format json line ``serving /metrics``)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if "serving /metrics" in line:
                return str(json.loads(line)["address"])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the exporter did not start:\n{log.read_text()}")


def measure(containers: int, scrapes: int, interval: float, idle: float) -> list[object]:
    with short_tmp() as directory, child_cgroup(directory) as cgroup:
        time.sleep(2)  # let the workload write and read its file
        ids = [f"c{n}" for n in range(containers)]
        agent_args = ["--cgroupfs-root", str(CGROUP_V1), *(f"--container={i}={cgroup}" for i in ids)]
        with AgentProcess(directory, agent_args) as agent:
            log = directory / "exporter.log"
            argv = [*CLI, "--log-level", "debug", "exporter", "--listen-http", "127.0.0.1:0"]
            argv += ["--log-format", "json"]
            argv += ["--agent", agent.address, *(f"--container={i}" for i in ids)]
            with open(log, "wb") as out:
                process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stderr=out)
            try:
                url = wait_for_port(log, process)
                exporter = psutil.Process(process.pid)
                rss_start = exporter.memory_info().rss
                before = exporter.cpu_times()
                for _ in range(scrapes):
                    with urllib.request.urlopen(url, timeout=30) as response:
                        assert b"container_memory_working_set_bytes" in response.read()
                    time.sleep(interval)
                after = exporter.cpu_times()
                busy = after.user + after.system - before.user - before.system
                time.sleep(1)
                quiet = exporter.cpu_times()
                time.sleep(idle)
                idle_end = exporter.cpu_times()
                hwm = _vm_hwm(process.pid)
                idle_cpu = idle_end.user + idle_end.system - quiet.user - quiet.system
            finally:
                process.terminate()
                process.wait(timeout=10)
    return [containers, rss_start / 2**20, hwm / 2**20, busy / scrapes * 1e3, idle_cpu / idle * 1e3]


def _vm_hwm(pid: int) -> int:
    """Peak resident set (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.exporter_footprint", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--containers", type=int, action="append", help="repeatable (default: 1 and 50)")
    parser.add_argument("--scrapes", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between scrapes")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of no scrapes to watch")
    args = parser.parse_args(argv)
    rows = [measure(n, args.scrapes, args.interval, args.idle) for n in args.containers or [1, 50]]
    print_rows(
        f"shimstats exporter footprint ({args.scrapes} scrapes, {args.interval:g} s apart, real agent, "
        "live v1 cgroup)",
        ["containers", "RSS after start (MiB)", "peak RSS (MiB)", "CPU per scrape (ms)", "idle CPU (ms/s)"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
