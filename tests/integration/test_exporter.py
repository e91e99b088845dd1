"""`shimstats exporter` as a process, scraped over real HTTP and parsed with prometheus_client's parser.

Guest agents are real ``python -m guest_agent`` processes serving captured kernels (tests/fixtures/cgroupfs)
on unix sockets; a silent agent is a socket in this process that reads requests and never answers. Expected
values come from the fixture's own files by cAdvisor's rules (docs/spec/formulas.md §2):

* v2: usage = memory.current; working set = usage - memory.stat inactive_file (0 if larger); rss = anon;
  cache = file; mapped_file = file_mapped; failcnt = memory.events max; max usage = memory.peak; swap =
  memory.swap.current; limit = memory.max ("max" → 0); cpu seconds = cpu.stat *_usec / 1e6.
* v1: usage = memory.usage_in_bytes; working set = usage - total_inactive_file; rss = total_rss; cache =
  total_cache; mapped_file = total_mapped_file; failcnt, max usage, kernel from their files; swap = memsw
  - usage; limit = limit_in_bytes (above 2**62 → 0); cpu seconds = cpuacct.usage / 1e9 and cpuacct.stat
  ticks / SC_CLK_TCK.
"""

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
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shimstats._proto.kata import agent_pb2
from shimstats.exporter import BARE_COUNTERS
from shimstats.ttrpc import Frame, FrameDecoder, MessageType
from shimstats.ttrpc.framing import decode_request
from tests.integration.harness import (
    CLI,
    REPO,
    START_TIMEOUT,
    AgentProcess,
    Fixture,
    fixtures,
    short_tmp,
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


def labels_for(fx: Fixture) -> dict[str, str]:
    """Kubernetes labels for a fixture's container in the test config, distinct per fixture."""
    return {"container": f"c-{fx.name}", "pod": f"pod-{fx.name}", "namespace": f"ns-{fx.guest_version}"}


def toml_config(path: Path, agents: dict[str, list[tuple[str, dict[str, str]]]]) -> Path:
    """Write an exporter config: agent address → [(container id, labels)]."""
    lines = []
    for address, containers in agents.items():
        lines += ["[[agents]]", f"address = {json.dumps(address)}"]
        for container_id, labels in containers:
            lines += ["[[agents.containers]]", f"id = {json.dumps(container_id)}"]
            lines += [f"{key} = {json.dumps(text)}" for key, text in labels.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def fixture_agents(directory: Path) -> Iterator[list[tuple[Fixture, AgentProcess]]]:
    """One guest agent process per container fixture, each in its own subdirectory of ``directory``."""
    with contextlib.ExitStack() as stack:
        started = []
        for n, fx in enumerate(CONTAINER_FIXTURES):
            sub = directory / str(n)
            sub.mkdir()
            started.append((fx, stack.enter_context(AgentProcess(sub, fx.agent_args()))))
        yield started


def test_every_fixture_is_exported_with_cadvisor_figures_and_its_labels() -> None:
    assert {f.guest_version for f in CONTAINER_FIXTURES} == {1, 2}, "need v1 and v2 container fixtures"
    with short_tmp() as directory, fixture_agents(directory) as agents:
        config = toml_config(
            directory / "exporter.toml",
            {agent.address: [(fx.request_id, labels_for(fx))] for fx, agent in agents},
        )
        # --kata-host-cgroup v1: the correction rule below is the Go shim's on a v1 host, whatever this host
        with ExporterProcess(directory, "--config", str(config), "--kata-host-cgroup", "v1") as exporter:
            series, _ = exporter.scrape()
            assert exporter.stop() == 0

    for fx, agent in agents:
        # cAdvisor's labels: id is the cgroup path (in the guest, as our agent reports it), name the
        # container id (cAdvisor's first alias); without a sandbox id in the config, the agent's address
        # names the sandbox
        cgroup = str(fx.meta["container_path"])
        who = {"id": cgroup, "name": fx.request_id, "sandbox": agent.address, **labels_for(fx)}
        for name, expected in truth(fx).items():
            assert value(series, name, **who) == pytest.approx(expected, rel=1e-12, abs=0), (fx.name, name)
        assert value(series, "container_cpu_usage_seconds_total", cpu="total", **who) is not None
        assert value(series, "shimstats_guest_cgroup_info", version=f"v{fx.guest_version}", **who) == 1
        # the Kata Go shim on a v1 host: a v1 guest's total_inactive_file is copied (no error), a v2 guest's
        # inactive_file is not (its working set is the whole usage: G1)
        t = truth(fx)
        overstated = (
            0
            if fx.guest_version == 1
            else t["container_memory_usage_bytes"] - t["container_memory_working_set_bytes"]
        )
        assert value(series, "shimstats_working_set_correction_bytes", **who) == overstated
        sandbox_labels = {"pod": f"pod-{fx.name}", "namespace": f"ns-{fx.guest_version}"}
        assert value(series, "shimstats_agent_up", sandbox=agent.address, **sandbox_labels) == 1
        # no failure yet, no error series
        assert (
            value(series, "shimstats_agent_errors_total", sandbox=agent.address, code="UNAVAILABLE") is None
        )
    # the labels a cAdvisor user filters on, on every per-container series
    for name, samples in series.items():
        if name.startswith("container_"):
            for labels, _ in samples:
                assert set(LABELS) | {"id", "name", "sandbox"} <= set(labels), name
    assert value(series, "shimstats_scrape_duration_seconds") is not None


def test_a_dead_or_silent_agent_never_holds_a_scrape_past_the_timeout() -> None:
    """Three containers on a silent agent and one on a dead socket, a 1 s deadline per sandbox: the scrape
    takes that second, the live agent's container is exported regardless, every silent container is
    actually asked (read one after the other, the first would use up the whole deadline), and each stuck
    sandbox is named once: one log line, shimstats_agent_up 0, one error per scrape."""
    fx = next(f for f in CONTAINER_FIXTURES if f.guest_version == 2)
    timeout = 1.0
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(short_tmp())
        live = stack.enter_context(AgentProcess(directory, fx.agent_args()))
        silent = stack.enter_context(SilentAgent(directory / "silent.sock"))
        dead = f"unix://{directory}/dead.sock"
        config = toml_config(
            directory / "exporter.toml",
            {
                live.address: [(fx.request_id, {})],
                silent.address: [(name, {}) for name in ("s1", "s2", "s3")],
                dead: [("d1", {})],
            },
        )
        with ExporterProcess(directory, "--config", str(config), "--timeout", str(timeout)) as exporter:
            first, took_first = exporter.scrape()
            second, took_second = exporter.scrape()
            assert exporter.stop() == 0
            lines = exporter.log_lines()
        requested = silent.counts()

    for took in (took_first, took_second):
        assert timeout * 0.9 <= took < timeout * 2, took
    for series in (first, second):
        assert ids(series, "container_memory_working_set_bytes") == {fx.request_id}
        for name in series:
            if name.startswith("container_"):
                assert ids(series, name) <= {fx.request_id}, name
        assert value(series, "shimstats_agent_up", sandbox=live.address, pod="", namespace="") == 1
        assert value(series, "shimstats_agent_up", sandbox=silent.address, pod="", namespace="") == 0
        assert value(series, "shimstats_agent_up", sandbox=dead, pod="", namespace="") == 0
    # cumulative: a sandbox that does not answer counts once per scrape, whatever its number of containers
    assert (
        value(second, "shimstats_agent_errors_total", sandbox=silent.address, code="DEADLINE_EXCEEDED") == 2
    )
    assert value(second, "shimstats_agent_errors_total", sandbox=silent.address, code="UNAVAILABLE") == 0
    assert value(second, "shimstats_agent_errors_total", sandbox=dead, code="UNAVAILABLE") == 2
    assert value(second, "shimstats_agent_errors_total", sandbox=live.address, code="UNAVAILABLE") is None
    # one scrape asks each container once: two scrapes, two requests per id
    assert requested == {"s1": 2, "s2": 2, "s3": 2}
    # one warning per stuck sandbox, not one per container or per scrape; each names its sandbox
    warnings = [line for line in lines if line["level"] == "warning"]
    exporter_warnings = [w for w in warnings if w["logger"] == "shimstats.exporter"]
    assert sorted((w["sandbox"], w["code"]) for w in exporter_warnings) == sorted(
        [(silent.address, "DEADLINE_EXCEEDED"), (dead, "UNAVAILABLE")]
    )
    # the agent connection itself warns once about the dead socket, not at every dial
    assert [w["address"] for w in warnings if w["logger"] == "shimstats.agent"] == [dead]


def test_series_disappear_while_the_agent_is_down_and_come_back() -> None:
    fx = next(f for f in CONTAINER_FIXTURES if f.guest_version == 1)
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        args = ("--agent", agent.address, "--container", fx.request_id, "--timeout", "2")
        with ExporterProcess(directory, *args) as exporter:
            before, _ = exporter.scrape()
            agent.kill()
            during, took = exporter.scrape()
            agent.start()
            deadline = time.monotonic() + 10  # the exporter backs off failed dials for up to 2 s
            after, _ = exporter.scrape()
            while not ids(after, "container_memory_working_set_bytes") and time.monotonic() < deadline:
                time.sleep(0.1)
                after, _ = exporter.scrape()
            assert exporter.stop(signal.SIGINT) == 0
            lines = exporter.log_lines()

    working_set = truth(fx)["container_memory_working_set_bytes"]
    assert value(before, "container_memory_working_set_bytes", name=fx.request_id) == working_set
    assert ids(during, "container_memory_working_set_bytes") == set()
    assert took < 2, "a refused connection fails at once"
    assert value(during, "shimstats_agent_up", sandbox=agent.address) == 0
    assert value(during, "shimstats_agent_errors_total", sandbox=agent.address, code="UNAVAILABLE") == 1
    assert value(after, "container_memory_working_set_bytes", name=fx.request_id) == working_set
    assert value(after, "shimstats_agent_up", sandbox=agent.address) == 1

    # the container is announced once; the agent's outage is two sandbox lines, whatever the scrapes
    about = [(line["level"], line["msg"]) for line in lines if line.get("container_id") == fx.request_id]
    assert about == [("info", f"exporting container {fx.request_id}")]
    sandbox = [
        (line["level"], line["msg"])
        for line in lines
        if line.get("sandbox") == agent.address and "container_id" not in line
    ]
    assert [level for level, _ in sandbox] == ["warning", "info"]
    assert sandbox[0][1].startswith("guest agent not answering")
    assert sandbox[1][1] == "agent reachable again"
    assert lines[-1]["msg"] == "stopping"


def test_bad_arguments_exit_2_naming_the_problem() -> None:
    def exporter(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*CLI, "exporter", "--listen-http", "127.0.0.1:0", *args]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)

    with short_tmp() as directory:
        missing = exporter("--config", str(directory / "none.toml"))
        no_container = exporter("--agent", "unix:///tmp/x.sock")
        bad_address = exporter("--agent", "tcp://x:1", "--container", "a")
        both = exporter("--agent", "unix:///tmp/x.sock", "--config", str(directory / "none.toml"))
        root_without_discover = exporter(
            "--agent", "unix:///tmp/x.sock", "--container", "a", "--kata-root", "/x"
        )
        container_with_discover = exporter("--discover", "--container", "a")
        bad_port = exporter("--discover", "--agent-port", "kata")
    assert (missing.returncode, no_container.returncode, bad_address.returncode, both.returncode) == (
        2,
        2,
        2,
        2,
    )
    assert "--kata-root goes with --discover" in root_without_discover.stderr
    assert "--discover finds the containers itself" in container_with_discover.stderr
    assert "agent port 'kata'" in bad_port.stderr
    assert {p.returncode for p in (root_without_discover, container_with_discover, bad_port)} == {2}
    assert f"cannot read config {directory}/none.toml" in missing.stderr
    assert "--agent needs at least one --container" in no_container.stderr
    assert "tcp://x:1" in bad_address.stderr
    assert "not allowed with argument" in both.stderr


def test_a_taken_port_is_an_error_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = [*CLI, "exporter", "--listen-http", f"127.0.0.1:{port}", "--agent", "unix:///x.sock"]
        done = subprocess.run(
            [*argv, "--container", "a"], cwd=REPO, capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr


def test_healthz_reads_no_agent_and_metrics_does() -> None:
    """A liveness probe on /healthz must not cost a scrape: the silent agent is never asked until /metrics."""
    with short_tmp() as directory, SilentAgent(directory / "silent.sock") as silent:
        args = ("--agent", silent.address, "--container", "s1", "--timeout", "0.5")
        with ExporterProcess(directory, *args) as exporter:
            base = exporter.url.removesuffix("/metrics")
            for _ in range(3):
                with urllib.request.urlopen(f"{base}/healthz", timeout=30) as response:
                    assert (response.status, response.read()) == (200, b"ok\n")
            asked_before_metrics = silent.counts()
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"{base}/nothing", timeout=30)
            series, _ = exporter.scrape()
            assert exporter.stop() == 0
        asked_after = silent.counts()
    assert asked_before_metrics == {}
    assert missing.value.code == 404
    assert asked_after == {"s1": 1}
    assert value(series, "shimstats_agent_up", sandbox=silent.address) == 0


def test_sighup_reloads_the_config_and_a_broken_one_keeps_the_last() -> None:
    fx = next(f for f in CONTAINER_FIXTURES if f.guest_version == 2)
    with short_tmp() as directory, AgentProcess(directory, fx.agent_args()) as agent:
        path = directory / "exporter.toml"
        toml_config(path, {agent.address: [(fx.request_id, {"pod": "before"})]})
        with ExporterProcess(directory, "--config", str(path)) as exporter:
            before, _ = exporter.scrape()
            toml_config(path, {agent.address: [(fx.request_id, {"pod": "after", "container": "web"})]})
            exporter.process.send_signal(signal.SIGHUP)
            wait_for_log(exporter, "config reloaded")
            after, _ = exporter.scrape()
            path.write_text("[[agents]\n")
            exporter.process.send_signal(signal.SIGHUP)
            wait_for_log(exporter, "config not reloaded")
            kept, _ = exporter.scrape()
            assert exporter.stop() == 0
    working_set = truth(fx)["container_memory_working_set_bytes"]
    assert value(before, "container_memory_working_set_bytes", pod="before") == working_set
    assert value(after, "container_memory_working_set_bytes", pod="after", container="web") == working_set
    assert value(after, "container_memory_working_set_bytes", pod="before") is None
    assert value(kept, "container_memory_working_set_bytes", pod="after", container="web") == working_set


def wait_for_log(exporter: ExporterProcess, prefix: str) -> dict[str, Any]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = [line for line in exporter.log_lines() if line["msg"].startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line starting {prefix!r}:\n{exporter.log_path.read_text()}")
