"""`shimstats check-resources` against a guest agent serving real-kernel v2 captures over a unix socket.

The agent (AgentService, which registers Resources beside StatsContainer) runs in a thread with its own
event loop; the command runs as `shimstats.cli.main` in the test's thread, as a user would run it. The two
resized fixtures were written for stated requests and limits (see their meta.json); the flags below are
those requests. Kata-agent's answers to a service it does not have are the ones in docs/spec/ttrpc.md §5.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guest_agent.layout import detect_layout
from guest_agent.lookup import ContainerLocator
from guest_agent.reader import CgroupReader
from guest_agent.service import AgentService
from shimstats import cli
from shimstats.commands.check_resources import cannot_report, duration
from shimstats.ttrpc import CallContext, Code, Server, TtrpcError
from tests.integration.test_guest_socket import fixture_dirs, sock_dir

__all__ = ["sock_dir"]  # the fixture is used here by name

LINEAR_FLAGS = [
    "--cpu-request",
    "100m",
    "--cpu-limit",
    "500m",
    "--memory-request",
    "128Mi",
    "--memory-limit",
    "1G",
]
QUADRATIC_FLAGS = [
    "--cpu-request",
    "2",
    "--cpu-limit",
    "2",
    "--memory-request",
    "256Mi",
    "--memory-limit",
    "256Mi",
]


@contextlib.contextmanager
def serving_in_thread(address: str, register: Callable[[Server], None]) -> Iterator[None]:
    """A ttrpc server on ``address`` in a thread of its own, stopped and joined on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: list[Server] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            server = Server()
            register(server)
            loop.run_until_complete(server.start(address))
            holder.append(server)
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        if failure:
            raise failure[0]
        yield
    finally:
        if holder:
            asyncio.run_coroutine_threadsafe(holder[0].close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def agent(address: str, cgroup: Path) -> Iterator[None]:
    """Our guest agent for the tree ``cgroup``."""
    layout = detect_layout(str(cgroup))
    reader = CgroupReader(layout)
    try:
        with serving_in_thread(address, AgentService(reader, ContainerLocator(layout)).register):
            yield
    finally:
        reader.close()


def resized(suffix: str, tmp_path: Path) -> tuple[Path, str]:
    """A writable copy of the v2 resized fixture: its cgroup tree and the container id."""
    found = [
        p for p in fixture_dirs() if p.name.startswith("v2-") and p.name.endswith(f"-container-{suffix}")
    ]
    if not found:
        pytest.skip(f"no v2 *-container-{suffix} fixture")
    shutil.copytree(found[-1] / "cgroup", tmp_path / "cgroup", symlinks=True)
    meta = json.loads((found[-1] / "meta.json").read_text())
    return tmp_path / "cgroup", meta["container_id"]


def check(
    capsys: pytest.CaptureFixture[str], address: str, container_id: str, *flags: str
) -> tuple[int, str, str]:
    code = cli.main(["check-resources", "--agent", address, "--id", container_id, *flags])
    out, err = capsys.readouterr()
    return code, out, err


def test_linear_fixture_matches_its_requests(tmp_path, sock_dir, capsys):
    cgroup, cid = resized("resized-linear", tmp_path)
    address = f"unix://{sock_dir}/a.sock"
    with agent(address, cgroup):
        code, out, _ = check(capsys, address, cid, *LINEAR_FLAGS)
        assert code == 0, out
        for row in (
            "cpu.weight (v2)",
            "cpu.max (v2)",
            "memory.max (v2)",
            "memory.swap.max (v2)",
        ):
            (line,) = [line for line in out.splitlines() if line.startswith(row)]
            assert line.endswith(" ok"), line
        assert "cpu_shares 102, cpu_quota 50000, cpu_period 100000, memory_limit_in_bytes 1000000000" in out
        assert "999997440" in out  # 1G in whole 4096-byte pages, as the kernel showed it
        assert "verdict: all 4 checked settings as expected" in out

        code, out, _ = check(capsys, address, cid, *LINEAR_FLAGS, "--cpu-weight-rule", "quadratic")
        assert code == 0
        assert "verdict: all 4 checked settings as expected (cpu.weight by the other rule)" in out
        note = "applied 4 = linear rule (Kata agent, kubelet); quadratic rule (runc ≥ 1.3.2, crun) gives 17"
        assert f"cpu.weight: {note}\n" in out


def test_quadratic_fixture_is_the_other_rule_for_kata(tmp_path, sock_dir, capsys):
    cgroup, cid = resized("resized-quadratic", tmp_path)
    address = f"unix://{sock_dir}/a.sock"
    with agent(address, cgroup):
        code, out, _ = check(capsys, address, cid, *QUADRATIC_FLAGS)
        assert code == 0
        # 2 CPUs = 2048 shares: quadratic 174, linear 79, and kubelet's linear inverse reads 174 as 4537
        # shares (the 2048 row of docs/spec/mapping.md §2.2).
        note = (
            "cpu.weight: applied 174 = quadratic rule (runc ≥ 1.3.2, crun); linear rule (Kata agent, kubelet)"
            " gives 79 (kubelet's linear inverse reads 174 as 4537 shares)"
        )
        assert note in out
        code, out, _ = check(
            capsys, address, cid, *QUADRATIC_FLAGS, "--cpu-weight-rule", "quadratic", "--json"
        )
        assert code == 0
        report = json.loads(out)
        assert (report["verdict"], report["mismatches"], report["attempts"]) == ("match", [], 1)
        assert report["cri"]["cpu_shares"] == 2048
        assert report["pod"]["qos_class"] == "Guaranteed"
        by_file = {row["file"]: row for row in report["rows"]}
        assert by_file["cpu.weight"]["verdict"] == "ok"
        assert by_file["cpu.max"]["applied"] == by_file["cpu.max"]["expected"] == "200000 100000"
        assert by_file["pids.max"] == {
            "file": "pids.max",
            "cgroup_version": 2,
            "requested": "-",
            "expected": None,
            "rule": "",
            "applied": "512",
            "verdict": "not checked",
            "fails": False,
            "note": "",
        }


def test_a_mismatch_names_the_setting(tmp_path, sock_dir, capsys):
    cgroup, cid = resized("resized-quadratic", tmp_path)
    address = f"unix://{sock_dir}/a.sock"
    flags = [*QUADRATIC_FLAGS[:-1], "512Mi"]
    with agent(address, cgroup):
        code, out, _ = check(capsys, address, cid, *flags)
        assert code == 1
        assert "verdict: MISMATCH in memory.max" in out
        (line,) = [line for line in out.splitlines() if line.startswith("memory.max (v2)")]
        # expected (512Mi, whole pages already), by, applied, verdict
        assert line.split()[-7:] == [str(512 * 2**20), "whole", "4096", "B", "pages", "268435456", "MISMATCH"]
        code, out, _ = check(capsys, address, cid, *flags, "--json")
        assert (code, json.loads(out)["mismatches"]) == (1, ["memory.max"])


def test_waits_for_a_container_that_is_restarting(tmp_path, sock_dir, capsys):
    cgroup, cid = resized("resized-linear", tmp_path)
    events = cgroup / cid / "cgroup.events"
    events.write_text(events.read_text().replace("populated 1", "populated 0"))
    aside = cgroup / f"{cid}.restarting"
    (cgroup / cid).rename(aside)
    address = f"unix://{sock_dir}/a.sock"

    def come_back() -> None:  # first the cgroup reappears (empty), then a process enters it
        aside.rename(cgroup / cid)
        threading.Timer(
            0.3, lambda: events.write_text(events.read_text().replace("populated 0", "populated 1"))
        ).start()

    timer = threading.Timer(0.3, come_back)
    with agent(address, cgroup):
        timer.start()
        try:
            code, out, _ = check(capsys, address, cid, *LINEAR_FLAGS, "--wait", "20s", "--json")
        finally:
            timer.join()
    report = json.loads(out)
    assert (code, report["verdict"]) == (0, "match")
    assert report["attempts"] > 2  # missing, then not running, then checked
    assert 0.5 <= report["waited_seconds"] < 20


def test_gives_up_when_the_wait_runs_out(tmp_path, sock_dir, capsys):
    cgroup, cid = resized("resized-linear", tmp_path)
    events = cgroup / cid / "cgroup.events"
    events.write_text(events.read_text().replace("populated 1", "populated 0"))
    address = f"unix://{sock_dir}/a.sock"
    with agent(address, cgroup):
        code, out, err = check(capsys, address, cid, *LINEAR_FLAGS, "--wait", "600ms")
        assert (code, out) == (2, "")
        assert f"could not check {cid!r}" in err
        assert "is not running: its cgroup has no processes; gave up after 0.6 s and" in err
        code, out, err = check(capsys, address, "gone-for-good", "--wait", "300ms", "--json")
        assert code == 2
        assert json.loads(out)["verdict"] == "could not check"
        assert "NOT_FOUND: container 'gone-for-good': no cgroup found; gave up after 0.3 s" in err
    code, _, err = check(capsys, f"unix://{sock_dir}/nobody.sock", cid, "--wait", "200ms")
    assert code == 2
    assert "nobody.sock" in err
    assert "gave up after 0.2 s" in err


async def _rust_like(payload: bytes, ctx: CallContext) -> bytes:
    """ttrpc-rust's answer for a service it does not serve (docs/spec/ttrpc.md §5)."""
    raise TtrpcError(Code.INVALID_ARGUMENT, f"{ctx.service} service does not exist")


async def _old_rust_like(payload: bytes, ctx: CallContext) -> bytes:
    """ttrpc-rust up to 0.6 (kata-agent 2.0-2.3) and its sync server in every version: the method's path,
    src/asynchronous/server.rs do_handle_request, format!("{} does not exist", path)."""
    raise TtrpcError(Code.INVALID_ARGUMENT, f"/{ctx.service}/{ctx.method} does not exist")


@pytest.mark.parametrize(
    ("register", "answer"),
    [
        # A Go ttrpc server (and ours) that does not register the service: UNIMPLEMENTED.
        (
            lambda s: s.register("grpc.AgentService", {}),
            "UNIMPLEMENTED: service shimstats.agent.v1.Resources",
        ),
        (
            lambda s: s.register("shimstats.agent.v1.Resources", {"Get": _rust_like}),
            "INVALID_ARGUMENT: shimstats.agent.v1.Resources service does not exist",
        ),
        (
            lambda s: s.register("shimstats.agent.v1.Resources", {"Get": _old_rust_like}),
            "INVALID_ARGUMENT: /shimstats.agent.v1.Resources/Get does not exist",
        ),
    ],
    ids=["go-ttrpc", "ttrpc-rust", "ttrpc-rust-0.6"],
)
def test_an_agent_without_the_service_cannot_report(register, answer, sock_dir, capsys):
    address = f"unix://{sock_dir}/kata.sock"
    with serving_in_thread(address, register):
        code, out, err = check(capsys, address, "web-1", "--cpu-request", "1", "--wait", "30s")
    assert (code, out) == (2, "")
    assert "this agent cannot report applied resources" in err
    assert answer in err
    assert "gave up" not in err  # answered at once: no retry, no guess


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cpu-request", "lots"], "is not a Kubernetes quantity"),
        (["--memory-limit=-1Gi"], "is not a Kubernetes quantity"),
        (["--wait", "soon"], "is not a duration"),
        (["--swap-behavior", "LimitedSwap"], "LimitedSwap needs the node's memory capacity"),
        (["--swap-behavior", "LimitedSwap", "--node-cgroup", "v1"], "cgroup v2 nodes only"),
    ],
)
def test_bad_arguments_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["check-resources", "--agent", "unix:///nowhere.sock", "--id", "x", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_durations():
    assert [duration(t) for t in ("30", "1.5", "500ms", "30s", "2m", "1m30s", "1h")] == [
        30.0,
        1.5,
        0.5,
        30.0,
        120.0,
        90.0,
        3600.0,
    ]


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (Code.UNIMPLEMENTED, "service shimstats.agent.v1.Resources", True),
        (Code.INVALID_ARGUMENT, "shimstats.agent.v1.Resources service does not exist", True),
        (Code.INVALID_ARGUMENT, "/shimstats.agent.v1.Resources/Get does not exist", True),
        # the agent's own INVALID_ARGUMENT answers are about the request, not a missing service
        (Code.INVALID_ARGUMENT, "container id 'a/b' is not valid", False),
        (Code.INVALID_ARGUMENT, "/grpc.AgentService/StatsContainer does not exist", False),
        (Code.NOT_FOUND, "/shimstats.agent.v1.Resources/Get does not exist", False),
    ],
)
def test_cannot_report_recognises_exactly_the_missing_service(code, message, expected):
    assert cannot_report(TtrpcError(code, message)) is expected
