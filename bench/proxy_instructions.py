"""Instructions the proxy shim's ``start`` and ``delete`` actions execute, counted by callgrind (issue 16).

``python -m bench.proxy_instructions [--before DIR ...]`` (needs valgrind; root not needed; ~30 s a tree)

Wall times of a process that lives 50 ms swing by tens of percent on a shared machine; the user-space
instructions callgrind counts repeat to within ~0.2 % whatever the load. Per tree (this checkout, and
``DIR``, e.g. ``git archive main | tar -x -C DIR``), each run as the fast launcher runs it (``python -S``,
the launcher's module path):

- ``start`` of a container of its own group (a pod's sandbox, a plain ``ctr run``): the action forks its
  serving process; counted is the action's own process, to its exit after the address is printed;
- ``start`` of a container that joins a group whose server is up (CRI's containers in a pod): no fork;
- ``delete``, the common case (a state file, nothing listening any more), up to where the process becomes
  the inner shim's own ``delete`` (here: an inner shim path that does not exist, so the process stops
  there and callgrind can report it);
- the fork point: what ``start`` has imported when it forks (the imports of ``cli._start``), and the
  serving child's path to its first answer: that plus the server's imports (``setproctitle``,
  ``proxy.serving``, ``proxy.relay``), what containerd's first call (Create) waits for; and that plus the
  work of that first Create, with runtime options naming the proxy's TOML, as a deployment sends them
  (decode the envelope, swap the options, encode an answer);
- after the fork, start and child together: the work both do at once (start's rest, the child's
  imports), which on two busy CPUs compete with each other and with containerd;
- a bare ``python3 -S`` for scale.

The inner shim is a shell script that prints an address (its own instructions are not counted); the serving
child of the first case finds no inner shim and exits. Every count ends with ``os._exit``, as the proxy
does: the interpreter's teardown (~17M instructions) is not part of any action.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from shimstats.proxy import BINARY, CONFIG_ENV
from shimstats.proxy.launcher import search_path
from shimstats.proxy.sockets import proxy_address, unix_path
from tests.integration.harness import REPO

__all__ = ["main"]

CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
SKIP_TRACED = "*inner-shim*,/bin/sh"
"""Children not counted: the inner shim (a shell script) and what subprocess runs it with."""
SERVER_IMPORTS = (
    "import setproctitle; from shimstats.proxy.serving import run_server; import shimstats.proxy.relay"
)


def _pythonpath(tree: Path) -> str:
    """The tree first, then the launcher's directories for protobuf and setproctitle (not this checkout)."""
    others = [p for p in search_path() if Path(p).resolve() != REPO.resolve()]
    return os.pathsep.join([str(tree), *others])


def _collected(log: Path) -> int:
    found = re.search(r"Collected : (\d+)", log.read_text())
    if found is None:
        raise RuntimeError(f"{log}: callgrind reported no count")
    return int(found.group(1))


def count_code(tree: Path, code: str) -> int:
    """Instructions of ``python -S -c "<code>; os._exit(0)"`` with ``tree`` first on the module path."""
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "callgrind.log"
        argv = [
            *CALLGRIND,
            f"--log-file={log}",
            sys.executable,
            "-S",
            "-c",
            f"{code}; import os; os._exit(0)",
        ]
        env = {**os.environ, "PYTHONPATH": _pythonpath(tree)}
        subprocess.run(argv, env=env, cwd="/", check=True, capture_output=True)
        return _collected(log)


class Actions:
    """A bundle, a config and a fake inner shim under ``directory``, to run one tree's actions in."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.run_dir = directory / "run"
        self.run_dir.mkdir()
        self.inner_address = f"unix://{self.run_dir}/inner.sock"
        shim = directory / "inner-shim"
        shim.write_text(
            f'#!/bin/sh\nfor a; do last=$a; done\n[ "$last" = start ] && echo "{self.inner_address}"\n'
        )
        shim.chmod(0o755)
        self.config = directory / "proxy.toml"
        # By name, looked up on PATH, as a production config names containerd-shim-kata-v2.
        self.config.write_text(f'inner_shim = "inner-shim"\nagent = "unix://{directory}/a/{{id}}.sock"\n')

    def _bundle(self, annotations: dict[str, str], state: dict[str, str] | None = None) -> Path:
        bundle = Path(tempfile.mkdtemp(dir=self.directory))
        (bundle / "config.json").write_text(json.dumps({"annotations": annotations}))
        (bundle / "log").touch()
        if state is not None:
            (bundle / "shimstats-proxy.json").write_text(json.dumps(state))
        return bundle

    def count(self, tree: Path, action: str, bundle: Path) -> int:
        """The action's own process, run in ``bundle`` as containerd runs it."""
        log = bundle / "callgrind.%p.log"
        code = f"import sys; sys.argv[0] = {BINARY!r}\nfrom shimstats.proxy.cli import run\nrun()"
        flags = ["-namespace", "bench", "-address", "/run/containerd/containerd.sock", "-publish-binary"]
        flags += ["/usr/bin/containerd", "-id", "c1", action]
        argv = [
            *CALLGRIND,
            "--trace-children=yes",
            f"--trace-children-skip={SKIP_TRACED}",
            f"--log-file={log}",
        ]
        env = {**os.environ, "PYTHONPATH": _pythonpath(tree)}
        env["PATH"] = f"{self.directory}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        env[CONFIG_ENV] = str(self.config)
        process = subprocess.Popen(
            [*argv, sys.executable, "-S", "-c", code, *flags],
            cwd=bundle, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = process.communicate(timeout=300)
        if action == "start" and not out.startswith(b"unix://"):
            raise RuntimeError(f"{tree}: start printed {out!r} {err!r}")
        return _collected(bundle / f"callgrind.{process.pid}.log")

    def start_new_group(self, tree: Path) -> int:
        count = self.count(tree, "start", self._bundle({}))
        time.sleep(1)  # the forked child finds no inner shim and leaves; its socket goes with it
        self._clear()
        return count

    def start_joining(self, tree: Path) -> int:
        ours = unix_path(proxy_address(self.inner_address))
        with socket.socket(socket.AF_UNIX) as server:  # "our server for that inner shim is up"
            server.bind(ours)
            server.listen()
            count = self.count(tree, "start", self._bundle({"io.kubernetes.cri.sandbox-id": "pod"}))
        self._clear()
        return count

    def delete(self, tree: Path) -> int:
        state = {
            "inner_shim": str(self.directory / "no-such-shim"),
            "inner_address": self.inner_address,
            "address": proxy_address(self.inner_address),
        }
        return self.count(tree, "delete", self._bundle({}, state))

    def _clear(self) -> None:
        for entry in self.run_dir.iterdir():
            entry.unlink()


def fork_point_imports(tree: Path) -> str:
    """What ``cli._start`` imports before ``run_start`` forks (the actions' log: logfmt, earlier logging),
    and what ServerChild loads just before its fork, where it does (shimstats.proxy.fork.SHARED_IMPORTS)."""
    log = (
        "shimstats.proxy.logfmt"
        if (tree / "shimstats/proxy/logfmt.py").exists()
        else "logging, shimstats.proxy.logs"
    )
    imports = (
        "from shimstats.proxy.cli import run; import types, shimstats.proxy.bundle, shimstats.proxy.config, "
        f"shimstats.proxy.launch, shimstats.ttrpc.address, {log}"
    )
    if "def _load_shared_imports" in (tree / "shimstats/proxy/fork.py").read_text():
        imports += "; from shimstats.proxy.fork import _load_shared_imports; _load_shared_imports()"
    return imports


def first_create() -> str:
    """Code that does what the serving child does with containerd's first call: a Create (a 64-character
    id, an overlay rootfs, the runtime options naming the proxy's TOML) decoded from its envelope, the
    options swapped for the inner shim's (``inner_create``), an answer encoded (the same calls in every
    tree since the relay)."""
    from shimstats._proto.containerd.task.v2 import shim_pb2
    from shimstats._proto.containerd.types import mount_pb2
    from shimstats.proxy.options import runtime_options
    from shimstats.ttrpc.framing import encode_request, metadata_pairs
    from shimstats.wire import NAMESPACE_KEY, TASK_SERVICE

    ours, inner = "/etc/shimstats/kata.toml", "/opt/kata/share/defaults/kata-containers/configuration.toml"
    options = runtime_options(ours)
    rootfs = mount_pb2.Mount(type="overlay", source="overlay", options=["workdir=/w", "upperdir=/u"])
    create = shim_pb2.CreateTaskRequest(
        id="c" * 64, bundle="/run/containerd/k8s.io/" + "c" * 64, rootfs=[rootfs]
    )
    create.options.type_url, create.options.value = options.type_url, options.value
    envelope = encode_request(
        TASK_SERVICE, "Create", create.SerializeToString(), timeout_nano=10**10,
        metadata=metadata_pairs({NAMESPACE_KEY: "k8s.io"}),
    )  # fmt: skip
    return (
        "from shimstats.ttrpc.framing import decode_request, encode_response; "
        "from shimstats.proxy.options import inner_create; "
        f"sent = inner_create(decode_request({envelope!r}).payload, {ours!r}, {inner!r}); "
        f"assert {inner.encode()!r} in sent; encode_response(bytes((8, 42)))"
    )


def measure(tree: Path) -> dict[str, int]:
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j0", "shimstats", "guest_agent"], cwd=tree, check=True
    )
    fork_point = fork_point_imports(tree)
    with tempfile.TemporaryDirectory(prefix="pi-", dir="/tmp") as scratch:
        actions = Actions(Path(scratch))
        counts = {
            "bare python3 -S": count_code(tree, "pass"),
            "start, new group (forks)": actions.start_new_group(tree),
            "start, joining a group": actions.start_joining(tree),
            "delete (to the inner shim's)": actions.delete(tree),
            "fork point (start's imports then)": count_code(tree, fork_point),
            "child's first answer: + server imports": count_code(tree, f"{fork_point}; {SERVER_IMPORTS}"),
            "+ its first Create, our runtime options": count_code(
                tree, f"{fork_point}; {SERVER_IMPORTS}; {first_create()}"
            ),
        }
    fork = counts["fork point (start's imports then)"]
    counts["after the fork, start and child together"] = (
        counts["start, new group (forks)"] + counts["child's first answer: + server imports"] - 2 * fork
    )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_instructions", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        help="another tree to count (git archive main); repeatable",
    )
    args = parser.parse_args(argv)
    trees = {"this checkout": REPO, **{str(tree.name): tree.resolve() for tree in args.before}}
    results = {name: measure(tree) for name, tree in trees.items()}
    names = list(results)
    print(f"{'instructions (callgrind), millions':<42}" + "".join(f"{n[:15]:>16}" for n in names))
    for figure in results[names[0]]:
        row = "".join(f"{results[n][figure] / 1e6:>16.1f}" for n in names)
        if len(names) == 2:
            row += f"{(results[names[0]][figure] - results[names[1]][figure]) / 1e6:>+12.1f}"
        print(f"{figure:<42}{row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
