"""Finding the Kata sandboxes at every scrape: re-listing the roots (what ``exporter --discover`` does,
shimstats.discovery.list_sandboxes) against a watch kept with an inotify library, as issue 13 asks.

The node is a root of N sandbox directories, each holding a listening ``shim-monitor.sock`` (a real unix
socket, as a Kata shim leaves it). Three ways to know the sandboxes at a scrape:

* re-list: ``list_sandboxes`` (a listdir, a stat of each socket);
* asyncinotify (kept, pure Python over the inotify syscalls): a watch on the root and one on each sandbox
  directory (the socket appears after its directory), drained without blocking at each scrape;
* watchfiles (kept, Rust's notify crate): its watcher thread, each change batch folded into a set; a scrape
  reads the set. Its costs are elsewhere: the thread's CPU while idle, and how late a change shows.

Per scrape, two cases: nothing changed (most scrapes), and one sandbox came and one left since the last one
(a churning node). Every answer is checked against a fresh listing, so a fast wrong answer cannot win.

    python -m bench.sandbox_watch --sandboxes 110 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil
import watchfiles
from asyncinotify import Inotify, Mask

from shimstats.discovery import MONITOR_SOCKET, list_sandboxes

ROOT_EVENTS = Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.ONLYDIR
SANDBOX_EVENTS = Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO


def sandbox_id(n: int) -> str:
    return f"{n:064x}"  # Kata's sandbox ids are 64 hex digits


class Node:
    """A Kata root of sandbox directories, each with a listening shim-monitor.sock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sockets: dict[str, socket.socket] = {}
        self.next = 0

    def add(self) -> str:
        sid = sandbox_id(self.next)
        self.next += 1
        (self.root / sid).mkdir()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.root / sid / MONITOR_SOCKET))
        listener.listen()
        self.sockets[sid] = listener
        return sid

    def remove(self, sid: str) -> None:
        """The shim exits: its socket and directory go."""
        self.sockets.pop(sid).close()
        (self.root / sid / MONITOR_SOCKET).unlink()
        (self.root / sid).rmdir()

    def close(self) -> None:
        for listener in self.sockets.values():
            listener.close()


def relisted(root: Path) -> set[str]:
    return {s.id for s in list_sandboxes([str(root)])}


class InotifySandboxes:
    """The sandbox set kept by asyncinotify: what a watching exporter would have to do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # sync_timeout=0: a poll that finds nothing returns at once (its NONBLOCK flag still blocked here)
        self.inotify = Inotify(cache_size=64, sync_timeout=0)
        self.inotify.add_watch(root, ROOT_EVENTS)
        self.ids: set[str] = set()
        for name in os.listdir(root):
            self._directory(name)

    def _directory(self, name: str) -> None:
        """Watch a new sandbox directory, then look for its socket (it may be there before the watch)."""
        with contextlib.suppress(OSError):
            self.inotify.add_watch(self.root / name, SANDBOX_EVENTS)
        if (self.root / name / MONITOR_SOCKET).exists():
            self.ids.add(name)

    def sandboxes(self) -> set[str]:
        """Apply what happened since the last call (nothing to read: one non-blocking read)."""
        while (event := self.inotify.sync_get()) is not None:
            if Mask.Q_OVERFLOW in event.mask:  # the kernel dropped events: only a listing can tell
                self.ids = relisted(self.root)
                continue
            if event.name is None or event.watch is None:
                continue
            name = str(event.name)
            if event.watch.path == self.root:
                if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                    self._directory(name)
                else:
                    self.ids.discard(name)
            elif name == MONITOR_SOCKET:
                sid = event.watch.path.name
                if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                    self.ids.add(sid)
                else:
                    self.ids.discard(sid)
        return set(self.ids)

    def close(self) -> None:
        self.inotify.close()


class WatchfilesSandboxes:
    """The sandbox set kept by watchfiles' watcher thread (recursive: the socket lands inside a directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids = relisted(root)
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        changes = watchfiles.watch(self.root, stop_event=self._stop, yield_on_timeout=True, rust_timeout=500)
        self._ready.set()  # the first batch comes once the watch is set up; the first yield is a timeout
        for batch in changes:
            if not batch:
                continue
            with self._lock:
                for change, path in batch:
                    relative = Path(path).relative_to(self.root).parts
                    if len(relative) == 2 and relative[1] == MONITOR_SOCKET:
                        if change == watchfiles.Change.deleted:
                            self.ids.discard(relative[0])
                        else:
                            self.ids.add(relative[0])
                    elif len(relative) == 1 and change == watchfiles.Change.deleted:
                        self.ids.discard(relative[0])
                    elif len(relative) == 1 and (self.root / relative[0] / MONITOR_SOCKET).exists():
                        # the socket may come before notify watches the new directory: look for it
                        self.ids.add(relative[0])
            self.changed.set()

    def sandboxes(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def churn_us(node: Node, find: Callable[[], set[str]], rounds: int) -> float:
    """µs of ``find()`` per scrape when one sandbox came and one left since the last scrape; every answer is
    checked against a fresh listing."""
    total = 0.0
    for _ in range(rounds):
        node.remove(min(node.sockets))
        node.add()
        started = time.perf_counter()
        found = find()
        total += time.perf_counter() - started
        assert found == relisted(node.root), "the watcher's set differs from the listing"
    return total / rounds * 1e6


def idle_us(find: Callable[[], set[str]], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        find()
    return (time.perf_counter() - started) / rounds * 1e6


def thread_cpu_per_s(seconds: float = 3.0) -> float:
    """This process's CPU seconds per second of wall time while it only sleeps (so: its other threads')."""
    me = psutil.Process()
    before = sum(me.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(me.cpu_times()[:2]) - before) / seconds


def watchfiles_latency_ms(node: Node, watcher: WatchfilesSandboxes, rounds: int = 5) -> float:
    """Median ms from a sandbox's socket appearing to watchfiles' set having it."""
    delays = []
    for _ in range(rounds):
        watcher.changed.clear()
        started = time.perf_counter()
        sid = node.add()
        while sid not in watcher.sandboxes():
            watcher.changed.wait(5)
            watcher.changed.clear()
        delays.append((time.perf_counter() - started) * 1e3)
    return sorted(delays)[len(delays) // 2]


def run(sandboxes: int, rounds: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    node = Node(directory)
    try:
        for _ in range(sandboxes):
            node.add()
        root = node.root
        result: dict[str, float] = {"sandboxes": sandboxes}
        result["relist_idle_us"] = idle_us(lambda: relisted(root), rounds)
        result["relist_churn_us"] = churn_us(node, lambda: relisted(root), rounds // 10)

        started = time.perf_counter()
        watch = InotifySandboxes(root)
        result["asyncinotify_setup_us"] = (time.perf_counter() - started) * 1e6
        try:
            assert watch.sandboxes() == relisted(root)
            result["asyncinotify_idle_us"] = idle_us(watch.sandboxes, rounds)
            result["asyncinotify_churn_us"] = churn_us(node, watch.sandboxes, rounds // 10)
        finally:
            watch.close()

        result["process_cpu_per_s_without_watcher"] = thread_cpu_per_s()
        watcher = WatchfilesSandboxes(root)
        try:
            result["watchfiles_idle_cpu_per_s"] = thread_cpu_per_s()
            result["watchfiles_idle_us"] = idle_us(watcher.sandboxes, rounds)
            result["watchfiles_latency_ms"] = watchfiles_latency_ms(node, watcher)
        finally:
            watcher.close()
        return result
    finally:
        node.close()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sandbox_watch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sandboxes", type=int, nargs="+", default=[110, 200])
    parser.add_argument("--rounds", type=int, default=2000, help="scrapes per idle measurement (churn: /10)")
    args = parser.parse_args(argv)
    for n in args.sandboxes:
        print(json.dumps({k: round(v, 2) for k, v in run(n, args.rounds).items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
