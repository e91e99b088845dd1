"""What every benchmark shares: latency summaries, A/B alternation, many-container cgroup trees, output.

Why alternate: this machine is small (2 cores) and noisy, so a slow minute would otherwise land on one side
only. Rounds run A B A B ...; each side's samples are pooled over all its rounds before taking percentiles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.containerd_env import PAGE_CACHE_COMMAND, READY_MARKER, Container, Containerd, controller_root
from tests.integration.harness import CLI, FIXTURES, REPO

__all__ = [
    "PAGECACHE_V1",
    "Summary",
    "adapter_process",
    "alternate",
    "live_containers",
    "many_containers",
    "print_rows",
    "ratio",
    "runc_container",
]

PAGECACHE_V1 = FIXTURES / "v1-6.18.44-fc-v669-container-pagecache"
"""The tree many_containers copies: cgroup v1 of this machine's kernel, one page-cache container."""


@dataclass(frozen=True)
class Summary:
    """Latency samples in seconds, reduced to what the tables show (all in µs)."""

    count: int
    median_us: float
    p99_us: float
    mean_us: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        ordered = sorted(samples)
        p99_index = max(0, math.ceil(len(ordered) * 0.99) - 1)
        return cls(
            count=len(ordered),
            median_us=statistics.median(ordered) * 1e6,
            p99_us=ordered[p99_index] * 1e6,
            mean_us=statistics.fmean(ordered) * 1e6,
        )


def ratio(ours: float, theirs: float) -> float:
    """ours/theirs, or infinity when theirs is 0."""
    return ours / theirs if theirs else math.inf


async def alternate(
    sides: Sequence[Callable[[int], Awaitable[list[float]]]], rounds: int, per_round: int
) -> list[list[float]]:
    """Run ``sides[i](per_round)`` for every side, in turn, ``rounds`` times; pooled samples per side."""
    pooled: list[list[float]] = [[] for _ in sides]
    for _ in range(rounds):
        for index, side in enumerate(sides):
            pooled[index].extend(await side(per_round))
    return pooled


def _container_dirs(root: Path, name: str) -> Iterator[Path]:
    """Every directory called ``name`` one level below a hierarchy under ``root`` (v1: one per controller)."""
    for hierarchy in sorted(root.iterdir()):
        if hierarchy.is_dir() and not hierarchy.is_symlink() and (hierarchy / name).is_dir():
            yield hierarchy / name
    if (root / name).is_dir():  # a v2 tree keeps the container right under the root
        yield root / name


def many_containers(fixture: Path, destination: Path, count: int, prefix: str = "bench-") -> list[str]:
    """Copy ``fixture``'s tree to ``destination`` with its container replicated ``count`` times.

    The copies are named ``<prefix>0000``... in every hierarchy that holds the original (the original stays
    too); returns their ids. The agent finds them by discovery, as it would in a guest. Copies are hard links
    (1,000 containers cost inodes, not 250 MB): the agent keys its open files by path, so each copy is
    still opened and read on its own.
    """
    meta = json.loads((fixture / "meta.json").read_text())
    name = str(meta["container_path"]).strip("/")
    shutil.copytree(fixture / "cgroup", destination, symlinks=True)
    ids = [f"{prefix}{index:04d}" for index in range(count)]
    for original in list(_container_dirs(destination, name)):
        for container_id in ids:
            shutil.copytree(original, original.parent / container_id, symlinks=True, copy_function=os.link)
    return ids


LIVE_CONTROLLERS = ("memory", "cpu", "cpuacct", "blkio", "pids")
"""The cgroup v1 controllers the agent reads (cpu and cpuacct are one hierarchy on some hosts, two here)."""


@contextlib.contextmanager
def live_containers(count: int, cache_kib: int = 1024, prefix: str = "bench-") -> Iterator[dict[str, str]]:
    """``count`` live cgroup v1 children, each holding a process that wrote and read back ``cache_kib`` KiB
    (its own page cache) and then sleeps: what a guest agent reads in production (kernfs), unlike a
    captured tree of regular files. Yields {id: cgroup path}; kills the processes and removes the cgroups.
    Root only."""
    roots = list(dict.fromkeys(root for root in map(controller_root, LIVE_CONTROLLERS) if root is not None))
    base = f"shimstats-bench-{os.getpid()}"
    scratch = Path(f"/tmp/{base}")
    scratch.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    paths = {f"{prefix}{index:04d}": f"/{base}/{prefix}{index:04d}" for index in range(count)}
    try:
        for container_id, path in paths.items():
            script = (
                f"read go && dd if=/dev/zero of={scratch}/{container_id} bs=1k count={cache_kib} 2>/dev/null"
                f" && cat {scratch}/{container_id} >/dev/null && echo ready && exec sleep 100000"
            )
            process = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            processes.append(process)
            for root in roots:
                (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
                (root / path.lstrip("/") / "cgroup.procs").write_text(str(process.pid))
            assert process.stdin is not None
            assert process.stdout is not None
            process.stdin.write(b"go\n")
            process.stdin.close()
            if process.stdout.readline() != b"ready\n":
                raise RuntimeError(f"{container_id}: the workload in {path} did not start")
        yield paths
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for root in roots:
            for path in paths.values():
                with contextlib.suppress(FileNotFoundError):
                    (root / path.lstrip("/")).rmdir()
            with contextlib.suppress(FileNotFoundError):
                (root / base).rmdir()
        shutil.rmtree(scratch, ignore_errors=True)


def print_rows(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A small fixed-width table, numbers with one decimal."""

    def cell(value: object) -> str:
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    texts = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in texts:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _wait_accepting(path: Path, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{path}: nothing accepts (process exit status {process.poll()})"
                ) from None
            time.sleep(0.01)
        finally:
            probe.close()


@contextlib.contextmanager
def adapter_process(directory: Path, agent_address: str, metrics_format: str = "v1") -> Iterator[str]:
    """``shimstats serve`` as deployed (log level warning: no per-call log line); yields its address.

    (The test harness's ServeProcess logs every call at debug level, which is right for tests and wrong
    for a benchmark.)
    """
    path = directory / "adapter.sock"
    argv = [*CLI, "--log-level", "warning", "serve", "--listen", f"unix://{path}", "--agent", agent_address]
    process = subprocess.Popen(
        [*argv, "--metrics-format", metrics_format], cwd=REPO, stdin=subprocess.DEVNULL
    )
    try:
        _wait_accepting(path, process)
        yield f"unix://{path}"
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def proxy_process(
    directory: Path, inner_address: str, agent_address: str, namespace: str, name: str = "proxy"
) -> Iterator[str]:
    """The proxy shim's serving process (``shimstats.proxy`` ``serve``: the relay, as ``start`` forks it) in
    front of ``inner_address`` (a real runc shim), Stats from the agent as v1, listening at ``name``.sock;
    yields its address."""
    path = directory / f"{name}.sock"
    argv = [sys.executable, "-m", "shimstats.proxy", "-namespace", namespace, "-id", "bench"]
    argv += ["--listen", f"unix://{path}", "--inner", inner_address, "--agent", agent_address]
    argv += ["--metrics-format", "v1", "--stats-fallback", "error", "serve"]
    process = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{' '.join(argv)} did not start (exit status {process.wait()})")
        yield f"unix://{path}"
    finally:
        _stop(process)


@contextlib.contextmanager
def runc_container(container_id: str = "bench-runc") -> Iterator[Container]:
    """A real containerd 1.6 + runc running busybox with the tests' page-cache workload (50 MiB written and
    read back, then sleep): the runc shim to compare with, and a live cgroup v1 for our agent to read."""
    with Containerd() as containerd:
        container = containerd.run_busybox(container_id, list(PAGE_CACHE_COMMAND))
        try:
            container.wait_for_output(READY_MARKER)
            yield container
        finally:
            containerd.kill(container)
