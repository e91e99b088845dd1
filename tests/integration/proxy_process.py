"""The proxy shim run as containerd runs it, for the tests that start it as a process (test_proxy_cli,
test_listen_backlog): its argv, its environment, and its serving process on a socket of the test's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shimstats.proxy import CONFIG_ENV
from shimstats.proxy.launch import ShimArgs
from tests.integration.harness import REPO, ServeProcess

__all__ = ["ARGS", "PROXY", "proxy_argv", "proxy_env", "serve_proxy"]

PROXY = [sys.executable, "-m", "shimstats.proxy"]
ARGS = ShimArgs("k8s.io", "c1", "/run/containerd/containerd.sock", "/usr/bin/containerd")


def proxy_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def proxy_argv(action: str, args: ShimArgs = ARGS) -> list[str]:
    return [*PROXY, *args.argv("", action)[1:]]


def serve_proxy(directory: Path, inner: ServeProcess) -> tuple[subprocess.Popen[bytes], Path]:
    ours = directory / "proxy.sock"
    argv = [
        *proxy_argv("serve")[:-1],
        "--listen", f"unix://{ours}",
        "--inner", inner.address,
        "--agent", f"unix://{directory}/agent.sock",
        "serve",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        env=proxy_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    assert process.stdout.read() == b""  # and the pipe is closed right after: start's read ends
    return process, ours
