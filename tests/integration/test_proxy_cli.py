"""The proxy binary as containerd runs it, without containerd: real processes, real sockets.

``start`` must print nothing but an address (containerd reads stdout and stderr together), and on failure
one line saying why. ``delete`` hands the inner shim's DeleteResponse through byte for byte. The serving
process says "ready" on its stdout pipe, forwards to its inner shim (here ``shimstats serve``, a real Task
server in another process), and stops on SIGTERM or when the inner shim goes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats.proxy import CONFIG_ENV, RUNTIME_TYPE
from shimstats.proxy.bundle import BundleState
from shimstats.proxy.launch import ShimArgs
from shimstats.ttrpc import SyncClient
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import ServeProcess, short_tmp
from tests.integration.proxy_process import ARGS, PROXY
from tests.integration.proxy_process import proxy_argv as _proxy
from tests.integration.proxy_process import proxy_env as _env
from tests.integration.proxy_process import serve_proxy as _serve

TIMEOUT = 30


def _fake_shim(directory: Path, body: str) -> Path:
    """An inner shim that records its arguments (argv.txt) and stdin (stdin.bin), then runs ``body``."""
    path = directory / "fake-shim"
    path.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{directory}/argv.txt"\ncat > "{directory}/stdin.bin"\n{body}\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _config(directory: Path, inner_shim: Path | str) -> Path:
    path = directory / "proxy.toml"
    path.write_text(f'inner_shim = "{inner_shim}"\nagent = "unix://{directory}/{{id}}.sock"\n')
    return path


def _run(argv: list[str], bundle: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, cwd=bundle, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT, check=False
    )


def test_start_without_a_config_says_where_to_put_one() -> None:
    with short_tmp() as bundle:
        done = _run(_proxy("start"), bundle, _env())
    assert done.returncode == 1
    assert done.stdout == b""  # containerd would take anything here for an address
    assert CONFIG_ENV in done.stderr.decode()
    assert len(done.stderr.decode().strip().splitlines()) == 1


def test_start_reports_the_inner_shims_failure() -> None:
    with short_tmp() as directory:
        shim = _fake_shim(directory, 'echo "inner says no: bad bundle"; exit 3')
        done = _run(_proxy("start"), directory, _env(**{CONFIG_ENV: str(_config(directory, shim))}))
        argv = (directory / "argv.txt").read_text().splitlines()
        stdin = (directory / "stdin.bin").read_bytes()
    assert done.returncode == 1
    assert done.stdout == b""
    message = done.stderr.decode()
    assert "inner says no: bad bundle" in message
    assert "(3)" in message
    assert argv == ARGS.argv("", "start")[1:]  # the same flags containerd gave us
    assert stdin == b""  # containerd sent no options, so neither do we


def test_start_refuses_an_inner_answer_that_is_no_address() -> None:
    with short_tmp() as directory:
        shim = _fake_shim(directory, 'echo "level=info msg=hello"')
        done = _run(_proxy("start"), directory, _env(**{CONFIG_ENV: str(_config(directory, shim))}))
    assert done.returncode == 1
    assert done.stdout == b""
    assert "not a unix:// address" in done.stderr.decode()


def test_start_needs_a_namespace() -> None:
    with short_tmp() as directory:
        done = _run([*PROXY, "-id", "c1", "start"], directory, _env())
    assert done.returncode == 1
    assert "namespace cannot be empty" in done.stderr.decode()


@pytest.mark.parametrize("status", [0, 2])
def test_delete_hands_the_inner_shims_answer_through(status: int) -> None:
    answer = shim_pb2.DeleteResponse(pid=4242, exit_status=137)
    answer.exited_at.GetCurrentTime()
    with short_tmp() as directory:
        (directory / "answer.bin").write_bytes(answer.SerializeToString())
        shim = _fake_shim(
            directory, f'cat "{directory}/answer.bin"; echo "warning: runc gone" >&2; exit {status}'
        )
        args = ShimArgs(
            "k8s.io", "c1", "/run/containerd/containerd.sock", "/usr/bin/containerd", str(directory)
        )
        done = _run(_proxy("delete", args), directory, _env(**{CONFIG_ENV: str(_config(directory, shim))}))
        argv = (directory / "argv.txt").read_text().splitlines()
    assert done.returncode == status
    assert done.stdout == answer.SerializeToString()
    assert "warning: runc gone" in done.stderr.decode()
    assert argv == args.argv("", "delete")[1:]


def test_delete_names_an_inner_shim_it_cannot_run() -> None:
    """delete becomes the inner shim's own delete (shimstats.proxy.delete); when that program is gone
    since start recorded it, one line says which, and nothing else is printed."""
    with short_tmp() as directory:
        missing = directory / "gone" / "containerd-shim-runc-v2"
        BundleState(str(missing), f"unix://{directory}/inner.sock", f"unix://{directory}/ours.sock").save(
            str(directory)
        )
        args = ARGS._replace(bundle_flag=str(directory))
        done = _run(_proxy("delete", args), directory, _env())
    assert done.returncode == 1
    assert done.stdout == b""
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert f"cannot run the inner shim {missing}" in lines[0]


def _wait_gone(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    return process.wait(timeout=timeout)


def test_serve_forwards_to_its_inner_shim_and_stops_on_sigterm() -> None:
    with (
        short_tmp() as directory,
        ServeProcess(directory, f"unix://{directory}/agent.sock", name="inner") as inner,
    ):
        process, ours = _serve(directory, inner)
        try:
            with SyncClient(f"unix://{ours}") as client:
                raw = client.call(
                    TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id="c1").SerializeToString()
                )
            # The answer is the inner process's (shimstats serve reports its own pid), not ours.
            assert shim_pb2.ConnectResponse.FromString(raw).shim_pid == inner.process.pid
            process.send_signal(signal.SIGTERM)
            assert _wait_gone(process) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert not ours.exists()
        assert inner.socket.exists()  # the inner shim is alive: its socket is not ours to remove


def test_serve_ends_when_its_inner_shim_ends() -> None:
    with (
        short_tmp() as directory,
        ServeProcess(directory, f"unix://{directory}/agent.sock", name="inner") as inner,
    ):
        process, ours = _serve(directory, inner)
        try:
            started = time.monotonic()
            inner.stop()
            assert _wait_gone(process) == 0
            assert time.monotonic() - started < 5.0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert not ours.exists()


@contextlib.contextmanager
def _started(log: bool = False) -> Iterator[tuple[Path, ServeProcess, dict[str, str], str]]:
    """An inner shim (``shimstats serve``, printed by a fake start) and one proxy ``start`` in front of it:
    (bundle directory, inner, start's environment, the address start printed). ``log``: the bundle has a
    ``log`` file (containerd's fifo; a regular file is appended to)."""
    with (
        short_tmp() as directory,
        ServeProcess(directory, f"unix://{directory}/agent.sock", name="inner") as inner,
    ):
        if log:
            (directory / "log").touch()
        shim = _fake_shim(directory, f'echo "{inner.address}"')
        env = _env(**{CONFIG_ENV: str(_config(directory, shim))})
        done = _run(_proxy("start"), directory, env)
        assert done.returncode == 0, done.stderr
        yield directory, inner, env, done.stdout.decode()


def test_start_hands_its_socket_to_the_server_which_forwards_and_cleans_up() -> None:
    """start binds our socket, passes it to the serving process (serve --listen-fd) and returns without
    waiting for it; a call made right away is queued until the server answers it from the inner shim. A
    second start for the same inner shim reuses that server; when the inner shim goes, so do the server
    and its socket file."""
    with _started() as (directory, inner, env, address):
        ours = Path(address.removeprefix("unix://"))
        assert ours.parent == inner.socket.parent
        assert ours != inner.socket
        assert (directory / "address").read_text() == address
        with SyncClient(address, timeout=TIMEOUT) as client:
            raw = client.call(TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id="c1").SerializeToString())
        assert shim_pb2.ConnectResponse.FromString(raw).shim_pid == inner.process.pid  # forwarded
        again = _run(_proxy("start"), directory, env)
        assert (again.returncode, again.stdout.decode()) == (0, address)
        servers = _pids_serving(address)
        assert len(servers) == 1, servers  # one serving process per inner shim, on the socket start bound
        title = Path(f"/proc/{servers[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
        fd = title[title.index("--listen-fd") + 1]
        listening = [row.split()[6] for row in Path("/proc/net/unix").read_text().splitlines()[1:]
                     if row.split()[-1] == str(ours)]  # fmt: skip
        # the fd its title names is the listening socket at our address, by inode, in its own fd table
        assert os.readlink(f"/proc/{servers[0]}/fd/{fd}") == f"socket:[{listening[0]}]", (title, listening)
        inner.stop()
        deadline = time.monotonic() + TIMEOUT
        while ours.exists() or _pids_serving(address):
            assert time.monotonic() < deadline, "the proxy's server outlived its inner shim"
            time.sleep(0.05)


def _logfmt(line: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(line))


def test_start_logs_to_the_bundles_log_in_containerds_shape() -> None:
    """start writes its lines (without the logging module: shimstats.proxy.logfmt) to the bundle's log, never
    to the stdout and stderr containerd reads as the address: that it started, and why a start failed."""
    with _started(log=True) as (directory, inner, _environ, address):
        broken = _config(directory, _fake_shim(directory, "echo inner refuses; exit 3"))
        failed = _run(_proxy("start"), directory, _env(**{CONFIG_ENV: str(broken)}))
        lines = [
            line for line in (directory / "log").read_text().splitlines() if "logger=shimstats.proxy" in line
        ]
        inner.stop()
    started = _logfmt(next(line for line in lines if "msg=started" in line))
    assert started["level"] == "info"
    assert (started["id"], started["namespace"], started["runtime"]) == ("c1", "k8s.io", RUNTIME_TYPE)
    assert (started["address"], started["inner"]) == (address, inner.address)
    assert failed.returncode == 1
    assert failed.stdout == b""
    error = _logfmt(next(line for line in lines if "start failed" in line))
    assert error["level"] == "error"
    assert "inner refuses" in error["msg"]
    assert error["msg"].removeprefix("start failed: ") in failed.stderr.decode()


def _pids_serving(address: str) -> list[int]:
    """Processes running our ``serve`` action on ``address`` with the socket start handed them."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").split()  # a title too
        except OSError:
            continue
        if b"serve" in argv and address.encode() in argv and b"--listen-fd" in argv:
            found.append(int(entry))
    return found


def _processes_of(namespace: str) -> list[str]:
    """Command lines of live processes started with ``-namespace namespace`` (start and what it forked)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            words = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and namespace in words and "-namespace" in words:
            found.append(f"pid {entry}: {' '.join(words)}")
    return found


def _wait_none_of(namespace: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while left := _processes_of(namespace):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.05)


def test_a_start_with_no_server_to_run_leaves_no_process_behind() -> None:
    """start forks its serving process before it knows whether one is needed (shimstats.proxy.fork). When
    none is (the inner shim groups this container with one our server already fronts, or the inner shim
    failed to start), the fork must go: no process of that start may stay."""
    with _started() as (directory, inner, env, address):
        grouped = ARGS._replace(namespace=f"grouped-{os.getpid()}")
        again = _run(_proxy("start", grouped), directory, env)
        assert (again.returncode, again.stdout.decode()) == (0, address)
        _wait_none_of(grouped.namespace)
        failing = ARGS._replace(namespace=f"failing-{os.getpid()}")
        broken = _config(directory, _fake_shim(directory, "echo no; exit 3"))
        done = _run(_proxy("start", failing), directory, _env(**{CONFIG_ENV: str(broken)}))
        assert done.returncode == 1
        _wait_none_of(failing.namespace)
        inner.stop()
