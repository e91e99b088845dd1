"""The proxy shim run as containerd runs it, for the tests that start it as a process (test_proxy_cli,
test_listen_backlog, the containerd and CRI tests, the hostile rig): the launcher a user installs with
`shimstats install-shim` (from this checkout), its argv, its environment, and its serving process on a
socket of the test's."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shimstats.proxy import BINARY, CONFIG_ENV
from shimstats.proxy.launch import ShimArgs
from shimstats.proxy.launcher import write_launcher
from tests.integration.harness import REPO, ServeProcess

__all__ = [
    "ARGS",
    "PROXY",
    "install_proxy",
    "is_proxy_server",
    "proxy_argv",
    "proxy_env",
    "serve_proxy",
]


def install_proxy(directory: Path, name: str = BINARY) -> Path:
    """``shimstats install-shim --dir directory``: the fast launcher, running this checkout."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(write_launcher(str(directory), name=name))


def _session_launcher() -> Path:
    """The launcher in a directory of this checkout's own under /tmp (rewritten at every import)."""
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:12]
    directory = Path(tempfile.gettempdir()) / f"shimstats-proxy-{os.getuid()}-{digest}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return install_proxy(directory)


PROXY = [str(_session_launcher())]


def is_proxy_server(argv: Sequence[str]) -> bool:
    """The command line of a proxy's serving process: a launcher (run by its interpreter, so argv[2]; the
    bench names a second one containerd-shim-kata-statsbefore-v2) or ``python -m shimstats.proxy`` (pip's
    console script, an older checkout), ending in ``serve``. ``start``'s forked server sets that command
    line as its process title: one string, words separated by spaces."""
    argv = " ".join(argv).split()  # /proc/PID/cmdline split at NULs: a title is one element (and "" ones)
    launched = any(os.path.basename(arg).startswith("containerd-shim-kata-stats") for arg in argv[:3])
    return bool(argv) and argv[-1] == "serve" and (launched or argv[1:3] == ["-m", "shimstats.proxy"])


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
