"""The exporter at node scale: N Kata sandboxes × M containers, discovered and scraped.

``python -m bench.exporter_scale [--sandboxes 200] [--containers 2] [--agents 4] [--scrapes 20]``

Each sandbox is a stand-in Kata shim management socket (tests/kata_standins.py, answering ``/agent-url``
with ``hvsock://<its own VMM socket>:1024``) and a hybrid-vsock muxer splicing ``CONNECT 2048`` to one of
``--agents`` real guest agents (``python -m guest_agent`` over a captured v2 kernel, every container id
mapped to the fixture's container). The exporter runs in a process of its own, exactly as
``shimstats exporter --discover`` builds it (DiscoveredTargets, AgentPool, ContainerCollector, the HTTP
server), except that pod and container names come from a fixed table instead of a CRI socket (no CRI runs
here). Reported: the first scrape (asks every shim, dials every agent), then per scrape over ``--scrapes``:
wall time (median, max), the exporter's CPU time (user + system of its process, from /proc), its RSS after.
Re-listing the roots against an inotify watch is bench/sandbox_watch.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from bench.common import print_rows
from shimstats.discovered_targets import DiscoveredTargets, PodNames
from shimstats.exporter import AgentPool, ContainerCollector, ContainerTarget
from shimstats.exporter_http import MetricsServer
from tests.kata_standins import HybridVsockMuxer, KataShimStandIn

FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/cgroupfs/v2-6.1.0-56-amd64-container-anon"
GUEST_PATH = "/shimstats-fx-anon"


def sandbox_id(n: int) -> str:
    return f"{n:04d}" + "ab" * 30


def container_ids(n: int, per: int) -> list[str]:
    return [f"{n:04d}{k:02d}" + "cd" * 29 for k in range(per)]


# -- the exporter process ---------------------------------------------------------------------------------


class FixedNames:
    """A PodNameSource read from the JSON table the parent wrote (stands for the CRI's two listings)."""

    address = "table"

    def __init__(self, path: str) -> None:
        table = json.loads(Path(path).read_text())
        self.pods = {sid: self._pod(pod) for sid, pod in table.items()}

    @staticmethod
    def _pod(pod: dict[str, Any]) -> PodNames:
        name, namespace = pod["pod"], pod["namespace"]
        containers = tuple(
            ContainerTarget(c, f"c{k}", name, namespace, "img:1") for k, c in enumerate(pod["containers"])
        )
        return PodNames(name, namespace, True, containers)

    def list(self) -> dict[str, PodNames]:
        return dict(self.pods)

    def close(self) -> None:
        pass


def serve(root: str, table: str) -> int:
    """The exporter side: print the /metrics URL, serve until stdin closes."""
    source = DiscoveredTargets([root], names=FixedNames(table))
    with AgentPool(timeout=3.0, kata_host="v1") as pool:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ContainerCollector(pool, source))
        with MetricsServer("127.0.0.1", 0, registry) as server:
            print(server.url, flush=True)
            sys.stdin.read()
    return 0


# -- the node around it -----------------------------------------------------------------------------------


@contextlib.contextmanager
def node(directory: Path, sandboxes: int, per: int, agents: int) -> Iterator[Path]:
    """Agents, muxers and shim stand-ins for ``sandboxes`` sandboxes; yields the Kata root."""
    root = directory / "sbs"
    root.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    sockets = [directory / f"agent{a}.sock" for a in range(agents)]
    for a, sock in enumerate(sockets):
        argv = [sys.executable, "-m", "guest_agent", "--listen", f"unix://{sock}"]
        argv += ["--cgroupfs-root", str(FIXTURE / "cgroup"), "--meminfo", str(FIXTURE / "meminfo")]
        for n in range(a, sandboxes, agents):
            for c in container_ids(n, per):
                argv += ["--container", f"{c}={GUEST_PATH}"]
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    muxers = [HybridVsockMuxer(directory / f"vm{n}.sock", sockets[n % agents]) for n in range(sandboxes)]
    shims: list[KataShimStandIn] = []
    try:
        deadline = time.monotonic() + 30
        while not all(s.exists() for s in sockets):
            if time.monotonic() > deadline:
                raise RuntimeError("the guest agents did not start")
            time.sleep(0.05)
        for m in muxers:
            asyncio.run_coroutine_threadsafe(m.__aenter__(), loop).result(10)
        for n, m in enumerate(muxers):
            shims.append(KataShimStandIn(root, sandbox_id(n), f"hvsock://{m.path}:1024").start())
        yield root
    finally:
        for shim in shims:
            shim.stop()
        for m in muxers:
            if m.listener is not None:
                asyncio.run_coroutine_threadsafe(m.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        for p in procs:
            p.terminate()
            p.wait(10)


def scrape(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
    return time.perf_counter() - started, body


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def run(sandboxes: int, per: int, agents: int, scrapes: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    try:
        table = directory / "names.json"
        table.write_text(
            json.dumps(
                {
                    sandbox_id(n): {
                        "pod": f"pod-{n}",
                        "namespace": "bench",
                        "containers": container_ids(n, per),
                    }
                    for n in range(sandboxes)
                }
            )
        )
        with node(directory, sandboxes, per, agents) as root:
            exporter = subprocess.Popen(
                [sys.executable, "-m", "bench.exporter_scale", "--serve", str(root), str(table)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert exporter.stdout is not None
            assert exporter.stdin is not None
            try:
                url = exporter.stdout.readline().decode().strip()
                proc = psutil.Process(exporter.pid)
                cpu0 = cpu_seconds(proc)
                first, body = scrape(url)
                cpu1 = cpu_seconds(proc)
                series = sum(
                    1 for line in body.splitlines() if line.startswith(b"container_memory_working_set")
                )
                walls = []
                for _ in range(scrapes):
                    walls.append(scrape(url)[0])
                cpu2 = cpu_seconds(proc)
                rss = proc.memory_info().rss / 2**20
            finally:
                exporter.stdin.close()
                exporter.wait(30)
        return {
            "sandboxes": sandboxes,
            "containers": sandboxes * per,
            "working_set_series": series,
            "first_scrape_s": first,
            "first_scrape_cpu_s": cpu1 - cpu0,
            "scrape_wall_median_s": statistics.median(walls),
            "scrape_wall_max_s": max(walls),
            "scrape_cpu_s": (cpu2 - cpu1) / scrapes,
            "rss_mib": rss,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.exporter_scale", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sandboxes", type=int, nargs="+", default=[110, 200])
    parser.add_argument("--containers", type=int, default=2, help="per sandbox (default: %(default)s)")
    parser.add_argument("--agents", type=int, default=4, help="guest agent processes (default: %(default)s)")
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--serve", nargs=2, metavar=("ROOT", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(*args.serve)
    results = [run(n, args.containers, args.agents, args.scrapes) for n in args.sandboxes]
    header = list(results[0])
    print_rows(
        f"exporter scrape at scale ({args.agents} agents, {args.scrapes} scrapes; seconds, MiB, µs)",
        header,
        [[f"{r[h]:.4g}" for h in header] for r in results],
    )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
