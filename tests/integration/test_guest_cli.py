"""``python -m guest_agent`` as a real process: arguments, serving a fixture, JSON logs, clean shutdown."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats._proto.kata import agent_pb2
from shimstats.ttrpc import Code, SyncClient, TransportError, TtrpcError
from tests.integration.guest_agent_helpers import as_dict, fixture_dirs, truth

REPO = Path(__file__).resolve().parents[2]


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guest_agent", *args], cwd=REPO, capture_output=True, text=True, timeout=30
    )


def connect(address: str, proc: subprocess.Popen[str], within: float = 10.0) -> SyncClient:
    """Connect once the agent listens (bounded wait); fail early if the process died."""
    deadline = time.monotonic() + within
    while True:
        try:
            return SyncClient(address, timeout=5)
        except (TransportError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def container_fixture() -> tuple[Path, dict[str, str]]:
    for fixture in fixture_dirs():
        meta = json.loads((fixture / "meta.json").read_text())
        if meta["container_path"] != "/":
            return fixture, meta
    pytest.skip("no container fixture captured")


@pytest.fixture
def agent(
    sock_dir: Path, container_fixture: tuple[Path, dict[str, str]]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    fixture, _ = container_fixture
    address = f"unix://{sock_dir}/agent.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guest_agent",
            "--listen",
            address,
            "--cgroupfs-root",
            str(fixture / "cgroup"),
            "--meminfo",
            str(fixture / "meminfo"),
            "--sandbox",
            "pod-sandbox",
            "--log-format",
            "json",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield address, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_help_teaches_with_examples():
    result = run_agent("--help")
    assert result.returncode == 0
    for text in (
        "examples:",
        "vsock://-1:",
        "--container abc123=/kubepods",
        "--cgroupfs-root",
        "--log-format",
    ):
        assert text in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "tcp://1.2.3.4:5"], "expected unix:///path"),
        (["--listen", "unix:///tmp/x.sock", "--container", "abc"], "expected ID=CGROUP_PATH"),
        (["--listen", "unix:///tmp/x.sock", "--container", "a/b=/x"], "must not contain"),
        (["--listen", "unix:///tmp/x.sock", "--sandbox", "../x"], "must not contain"),
        ([], "--listen"),
    ],
)
def test_bad_arguments_exit_2_and_say_why(args, message):
    result = run_agent(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_root_without_cgroups_exits_1_naming_it(tmp_path):
    result = run_agent("--listen", f"unix://{tmp_path}/a.sock", "--cgroupfs-root", str(tmp_path))
    assert result.returncode == 1
    assert str(tmp_path) in result.stderr


@pytest.mark.parametrize("kind", ["file", "controllers-dir", "controllers-binary", "controllers-unreadable"])
def test_a_cgroupfs_root_that_is_no_cgroup_tree_is_one_line_naming_it(tmp_path, kind):
    # A new user's slips: --cgroupfs-root naming a file, or a capture whose cgroup.controllers is not text.
    root = tmp_path / "root"
    if kind == "file":
        root.write_text("")
    else:
        root.mkdir()
        controllers = root / "cgroup.controllers"
        if kind == "controllers-dir":
            controllers.mkdir()
        elif kind == "controllers-binary":
            controllers.write_bytes(bytes(range(128, 256)))
        else:
            controllers.symlink_to(controllers)  # ELOOP, whoever runs the test
    result = run_agent("--listen", f"unix://{tmp_path}/a.sock", "--cgroupfs-root", str(root))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert str(root) in result.stderr


def test_serves_a_fixture_logs_json_and_stops_cleanly_on_sigterm(agent, container_fixture):
    address, proc = agent
    fixture, meta = container_fixture
    socket_path = address.removeprefix("unix://")
    with connect(address, proc) as client:
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
        request = agent_pb2.StatsContainerRequest(container_id=meta["container_id"]).SerializeToString()
        answer = agent_pb2.StatsContainerResponse.FromString(
            client.call("grpc.AgentService", "StatsContainer", request)
        )
        assert as_dict(answer) == as_dict(
            truth(fixture / "cgroup", meta["container_path"], fixture / "meminfo")
        )
        sandbox = agent_pb2.StatsContainerRequest(container_id="pod-sandbox").SerializeToString()
        whole = agent_pb2.StatsContainerResponse.FromString(
            client.call("grpc.AgentService", "StatsContainer", sandbox)
        )
        assert as_dict(whole) == as_dict(truth(fixture / "cgroup", "/", fixture / "meminfo"))
        missing = agent_pb2.StatsContainerRequest(container_id="missing-one").SerializeToString()
        with pytest.raises(TtrpcError) as info:
            client.call("grpc.AgentService", "StatsContainer", missing)
        assert info.value.code == Code.NOT_FOUND
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not os.path.exists(socket_path)
    assert proc.stderr is not None
    records = [json.loads(line) for line in proc.stderr.read().splitlines()]
    errors = [r for r in records if r["level"] in ("warning", "error")]
    assert len(errors) == 1  # one line per error
    assert errors[0]["container_id"] == "missing-one"
    assert "cgroup_path" in errors[0]
    assert errors[0]["code"] == "NOT_FOUND"
    assert any(r.get("address") == address for r in records)


def vsock_port() -> int:
    """A vsock port free for listening on any CID, or skip when this kernel has no vsock."""
    for _ in range(20):
        port = random.randrange(20000, 60000)
        try:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
                probe.bind((socket.VMADDR_CID_ANY, port))
                return port
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:  # in use: try another port; anything else: no usable vsock
                pytest.skip(f"AF_VSOCK unavailable here: {exc}")
    pytest.skip("no free vsock port found")


def test_listens_on_vsock_with_any_cid(container_fixture):
    # Kata guests reach the agent over vsock; listening needs no peer, so this runs wherever AF_VSOCK binds.
    fixture, _ = container_fixture
    address = f"vsock://-1:{vsock_port()}"
    args = ["--listen", address, "--cgroupfs-root", str(fixture / "cgroup"), "--log-format", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "guest_agent", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    # select() on the pipe would miss lines already pulled into the text buffer, so read lines
    # plainly and let a timer kill a hung agent (its stderr then ends and the loop stops).
    watchdog = threading.Timer(10, proc.kill)
    watchdog.start()
    try:
        listening = False
        for line in proc.stderr:
            record = json.loads(line)
            if record["msg"] == "listening" and record.get("address") == address:
                listening = True
                break
        watchdog.cancel()
        assert listening, f"no 'listening' line for {address}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_the_agent_imports_neither_grpcio_nor_psutil():
    code = (
        "import sys, guest_agent.__main__, guest_agent.service\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'psutil'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
