"""What finding a node's Kata sandboxes costs: listing the roots, asking every shim for its agent URL, and
``shimstats discover`` as a whole, for N sandboxes.

``python -m bench.discovery [--sandboxes N] [--rounds R]``

The N Kata shims are stand-ins (tests/kata_standins.py, Go runtime behaviour) served by a child process, so
their CPU is not ours. Each round lists the root (list_sandboxes) and asks all N shims at once
(read_agent_url, concurrently, as the exporter would per scrape); the process figures are wall time and CPU
(user + system) of this process per round. ``shimstats discover --json`` runs once per round with no CRI and
no agent behind the URLs (each health check fails at once: the hybrid-vsock socket does not exist), so its
wall time is discovery plus start-up, not agents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import print_rows
from shimstats.discovery import list_sandboxes, read_agent_url
from tests.integration.harness import CLI, REPO

_SERVE = """
import sys, time
from pathlib import Path
from tests.kata_standins import KataShimStandIn
root, n = Path(sys.argv[1]), int(sys.argv[2])
shims = [KataShimStandIn(root, f"sandbox-{i:04d}", f"hvsock:///nonexistent/{i}/clh.sock:1024",
                         poll_interval=1.0).start() for i in range(n)]
print("ready", flush=True)
sys.stdin.read()  # until the benchmark closes it; then the process is ended
"""


async def _ask_all(root: str) -> int:
    sandboxes = list_sandboxes([root])
    urls = await asyncio.gather(*(read_agent_url(s.socket) for s in sandboxes))
    return len(urls)


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ss-bench-", dir="/tmp") as directory:
        root = Path(directory) / "sbs"
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(root), str(args.sandboxes)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise SystemExit("the shim stand-ins did not start")
            walls, cpus, discovers = [], [], []
            for _ in range(args.rounds):
                wall, cpu = time.perf_counter(), _cpu()
                found = asyncio.run(_ask_all(str(root)))
                walls.append(time.perf_counter() - wall)
                cpus.append(_cpu() - cpu)
                assert found == args.sandboxes, found
                wall = time.perf_counter()
                done = subprocess.run(
                    [
                        *CLI,
                        "discover",
                        "--kata-root",
                        str(root),
                        "--cri",
                        f"unix://{directory}/none",
                        "--json",
                    ],
                    cwd=REPO,
                    capture_output=True,
                    check=False,
                )
                discovers.append(time.perf_counter() - wall)
                assert done.returncode == 1, done.stderr  # no agents: every sandbox unhealthy, none missing
        finally:
            server.terminate()  # the stand-ins' sockets go with the temporary directory
            server.wait(timeout=60)
    ms = 1000.0
    print_rows(
        f"{args.sandboxes} Kata shims (stand-ins), {args.rounds} rounds: median (max)",
        ("what", "wall ms", "max wall ms", "CPU ms (this process)"),
        [
            ("list roots + ask every shim (/agent-url)", statistics.median(walls) * ms, max(walls) * ms,
             statistics.median(cpus) * ms),
            ("shimstats discover --json (a process)", statistics.median(discovers) * ms,
             max(discovers) * ms, "-"),
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
