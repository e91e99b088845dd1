"""The exporter as a process, scraped and parsed, and the values it must show for a captured fixture by
cAdvisor's rules: shared by the exporter's integration tests (test_exporter.py has the rules' table)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shimstats._proto.kata import agent_pb2
from shimstats.exporter import BARE_COUNTERS
from shimstats.ttrpc import Frame, FrameDecoder, MessageType
from shimstats.ttrpc.framing import decode_request
from tests.integration.harness import (
    CLI,
    REPO,
    START_TIMEOUT,
    Fixture,
    fixtures,
)

Series = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name → [(labels, value)] as the exporter served them."""

CONTAINER_FIXTURES = [f for f in fixtures() if not f.is_root]
LABELS = ("container", "pod", "namespace", "image")


class ExporterProcess:
    """``shimstats --log-level debug exporter --listen-http 127.0.0.1:0 ... --log-format json``; returns from
    the constructor once the log names the port it serves on."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.log_path = directory / "exporter.log"
        argv = [
            *CLI,
            "--log-level",
            "debug",
            "exporter",
            "--listen-http",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*argv, *args], cwd=REPO, stdin=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        self.url = ""
        while not self.url:
            serving = [line for line in self.log_lines() if line["msg"].startswith("serving /metrics")]
            if serving:
                self.url = serving[0]["address"]
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"shimstats exporter did not start:\n{self.log_path.read_text()}")
            else:
                time.sleep(0.02)

    def scrape(self) -> tuple[Series, float]:
        """GET /metrics: (its series, the seconds the request took)."""
        started = time.monotonic()
        with urllib.request.urlopen(self.url, timeout=30) as response:
            assert response.status == 200
            text = response.read().decode()
        took = time.monotonic() - started
        series: Series = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                # the parser appends _total to counter samples; cAdvisor's failcnt counters have none
                name = family.name if family.name in BARE_COUNTERS else s.name
                series.setdefault(name, []).append((s.labels, s.value))
        return series, took

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ExporterProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


class SilentAgent:
    """A unix socket, served by a thread, that reads StatsContainer requests and never answers; counts the
    requests per container id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.address = f"unix://{path}"
        self.requested: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ, None)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        conn, _ = self._listener.accept()
                        conn.setblocking(False)
                        selector.register(conn, selectors.EVENT_READ, FrameDecoder())
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    data = conn.recv(65536)
                    if not data:
                        selector.unregister(conn)
                        conn.close()
                        continue
                    for event in key.data.feed(data):
                        if isinstance(event, Frame) and event.mtype == MessageType.REQUEST:
                            request = decode_request(event.payload)
                            if request.method != "StatsContainer":
                                continue  # the exporter also asks Resources/Get and Diagnostics; count stats
                            asked = agent_pb2.StatsContainerRequest.FromString(request.payload)
                            with self._lock:
                                self.requested[asked.container_id] += 1
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    key.fileobj.close()  # type: ignore[union-attr]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requested)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> SilentAgent:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def value(series: Series, name: str, /, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None when there is none."""
    found = [v for have, v in series.get(name, []) if all(have.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
    return found[0] if found else None


def ids(series: Series, name: str) -> set[str]:
    """The container ids (cAdvisor's ``name`` label) with a ``name`` series."""
    return {labels["name"] for labels, _ in series.get(name, [])}


def truth(fx: Fixture) -> dict[str, float]:
    """What cAdvisor would report for the fixture's container, from its files (rules in the docstring)."""
    stat = fx.keyed("memory", "memory.stat")
    out: dict[str, float]
    if fx.guest_version == 2:
        usage = int(fx.file("memory", "memory.current"))
        limit = fx.file("memory", "memory.max").strip()
        cpu = fx.keyed("cpu", "cpu.stat")
        cpu_max = fx.file("cpu", "cpu.max").split()
        weight = int(fx.file("cpu", "cpu.weight"))
        swap_max = fx.file("memory", "memory.swap.max").strip()
        out = {
            # the spec (our agent's Resources/Get), by cAdvisor's rules (shimstats/cadvisor_spec.py)
            "container_spec_cpu_shares": 2 + (weight - 1) * 262142 // 9999,
            "container_spec_cpu_period": int(cpu_max[1]),
            "container_spec_memory_reservation_limit_bytes": int(fx.file("memory", "memory.min")),
            "container_spec_memory_swap_limit_bytes": 0 if swap_max == "max" else int(swap_max),
            "container_oom_events_total": fx.keyed("memory", "memory.events")["oom_kill"],
            "container_threads": int(fx.file("pids", "pids.current")),
            "container_memory_usage_bytes": usage,
            "container_memory_working_set_bytes": max(usage - stat["inactive_file"], 0),
            "container_memory_rss": stat["anon"],
            "container_memory_cache": stat["file"],
            "container_memory_mapped_file": stat["file_mapped"],
            "container_memory_total_inactive_file_bytes": stat["inactive_file"],
            "container_memory_total_active_file_bytes": stat["active_file"],
            "container_memory_kernel_usage": stat["kernel"],
            "container_memory_failcnt": fx.keyed("memory", "memory.events")["max"],
            "container_memory_max_usage_bytes": int(fx.file("memory", "memory.peak")),
            "container_memory_swap": int(fx.file("memory", "memory.swap.current")),
            "container_spec_memory_limit_bytes": 0 if limit == "max" else int(limit),
            "container_cpu_usage_seconds_total": cpu["usage_usec"] / 1e6,
            "container_cpu_user_seconds_total": cpu["user_usec"] / 1e6,
            "container_cpu_system_seconds_total": cpu["system_usec"] / 1e6,
        }
        if cpu_max[0] != "max":
            out["container_spec_cpu_quota"] = int(cpu_max[0])
        return out
    usage = int(fx.file("memory", "memory.usage_in_bytes"))
    limit_v1 = int(fx.file("memory", "memory.limit_in_bytes"))
    ticks = fx.keyed("cpuacct", "cpuacct.stat")
    clk_tck = os.sysconf("SC_CLK_TCK")
    quota = int(fx.file("cpu", "cpu.cfs_quota_us"))
    soft = int(fx.file("memory", "memory.soft_limit_in_bytes"))
    out = {
        "container_spec_cpu_shares": int(fx.file("cpu", "cpu.shares")),
        "container_spec_cpu_period": int(fx.file("cpu", "cpu.cfs_period_us")),
        "container_spec_memory_reservation_limit_bytes": 0 if soft > 1 << 62 else soft,
        "container_oom_events_total": fx.keyed("memory", "memory.oom_control")["oom_kill"],
        "container_threads": int(fx.file("pids", "pids.current")),
        "container_memory_usage_bytes": usage,
        "container_memory_working_set_bytes": max(usage - stat["total_inactive_file"], 0),
        "container_memory_rss": stat["total_rss"],
        "container_memory_cache": stat["total_cache"],
        "container_memory_mapped_file": stat["total_mapped_file"],
        "container_memory_total_inactive_file_bytes": stat["total_inactive_file"],
        "container_memory_total_active_file_bytes": stat["total_active_file"],
        "container_memory_kernel_usage": int(fx.file("memory", "memory.kmem.usage_in_bytes")),
        "container_memory_failcnt": int(fx.file("memory", "memory.failcnt")),
        "container_memory_max_usage_bytes": int(fx.file("memory", "memory.max_usage_in_bytes")),
        "container_spec_memory_limit_bytes": 0 if limit_v1 > 1 << 62 else limit_v1,
        "container_cpu_usage_seconds_total": int(fx.file("cpuacct", "cpuacct.usage")) / 1e9,
        "container_cpu_user_seconds_total": ticks["user"] / clk_tck,
        "container_cpu_system_seconds_total": ticks["system"] / clk_tck,
    }
    if quota > 0:
        out["container_spec_cpu_quota"] = quota
    with contextlib.suppress(FileNotFoundError):
        out["container_memory_swap"] = max(int(fx.file("memory", "memory.memsw.usage_in_bytes")) - usage, 0)
        memsw = int(fx.file("memory", "memory.memsw.limit_in_bytes"))
        out["container_spec_memory_swap_limit_bytes"] = 0 if memsw > 1 << 62 else memsw
    return out
