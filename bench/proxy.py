"""What the proxy shim costs a container, against the runc shim alone, in one run (issue 16).

``python -m bench.proxy [--rounds N]`` (root; starts a private containerd 1.6 + runc)

Each round runs, alternating runc (A) then the proxy (B, containerd-shim-kata-stats-v2 in front of
containerd-shim-runc-v2):
- start: the shim binary's ``start`` action alone, as containerd runs it (flags, bundle directory as
  working directory, containerd's environment), timed from exec to exit: containerd reads the address when
  the process exits; then "start + first answer" adds the time a Task/Connect on that address takes to be
  answered (containerd's Create waits that long for a serving process still starting up). The shim is then
  told to Shutdown and its files are removed (not timed);
- run: ``ctr run -d`` of a busybox ``sleep`` with ``--runtime io.containerd.runc.v2`` or ours;
- RSS: the shim's serving process (runc: the ``containerd-shim-runc-v2`` serving the task; ours: the
  ``serve`` process ``start`` ran) from /proc/PID/status, right after the run and again after one
  ``ctr task metrics``
  (Stats answered by a guest agent on this host reading the container's cgroup: the whole Stats path loaded);
- delete: ``ctr task kill -s KILL``, wait until STOPPED (not timed), then ``ctr task delete`` timed; and
  the shim binary's ``delete`` action alone (after the start above), as containerd runs it once a shim's
  connection closes.
The start and delete actions also get their CPU time (user + system, the inner shim's included): on this
shared machine wall times swing with the load, CPU times much less.
Printed: medians and min–max per side, and B − A against the issue's targets (start +100 ms, delete
+50 ms, RSS 20 MB). Nothing here is asserted: the machine is shared and the numbers move between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from shimstats.proxy import BINARY, CONFIG_ENV, RUNTIME_TYPE
from shimstats.ttrpc import SyncClient
from shimstats.wire import NAMESPACE_KEY, TASK_SERVICE
from tests.containerd_env import Containerd, busybox_rootfs
from tests.integration.harness import REPO, AgentProcess, short_tmp
from tests.integration.proxy_process import is_proxy_server

__all__ = ["main"]

RUNC_SHIM = "containerd-shim-runc-v2"
RUNC_RUNTIME = "io.containerd.runc.v2"
NAMESPACE = "bench"
START_TARGET_MS = 100.0
DELETE_TARGET_MS = 50.0
RSS_TARGET_MB = 20.0


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _timed(argv: Sequence[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    began = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - began, done


def _children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _status_kb(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile of ``pid`` in kB (empty when it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    return values


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").replace("\0", " ").split()  # a process title too
    except OSError:
        return []


def _serving_pid(container_id: str, side: str) -> int:
    """The process that serves ``container_id``'s task API on ``side`` (0 when none is found).

    runc: the ``containerd-shim-runc-v2`` child (its argv has no action). Ours: the process ``start``
    forked, whose title is the ``serve`` command line that would run it by hand.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if "-id" not in argv or container_id not in argv or "delete" in argv:
            continue
        if side == "runc" and argv and argv[0].endswith(RUNC_SHIM) and "start" not in argv:
            return int(entry)
        if side != "runc" and is_proxy_server(argv):
            return int(entry)
    return 0


class Bench:
    """One containerd, one proxy config, the samples of every round."""

    def __init__(self, containerd: Containerd, directory: Path, proxies: dict[str, Proxy]) -> None:
        self.containerd = containerd
        self.directory = directory
        self.proxies = proxies
        self.sides = ["runc", *proxies]
        self.samples: dict[str, dict[str, list[float]]] = {side: {} for side in self.sides}
        self.count = 0

    def add(self, side: str, what: str, value: float) -> None:
        self.samples[side].setdefault(what, []).append(value)

    def _next_id(self, what: str) -> str:
        self.count += 1
        return f"{what}-{self.count:04d}"

    def _nsenter(self, cwd: Path) -> list[str]:
        # Entering a mount namespace moves the caller to its root: --wd brings it back to ``cwd``.
        return ["nsenter", f"--mount=/proc/{self.containerd.pid}/ns/mnt", f"--wd={cwd}", "--"]

    # -- the start action alone ----------------------------------------------------------------

    def start_action(self, side: str) -> None:
        container_id = self._next_id("s")
        bundle = self.directory / "bundles" / container_id
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": {}}))
        (bundle / "runtime").write_text("")  # the runc shim's Create writes it (runc binary; "" = runc)
        os.mkfifo(bundle / "log")  # containerd opens its read end before start; shims write their logs there
        log_fd = os.open(bundle / "log", os.O_RDONLY | os.O_NONBLOCK)
        try:
            self._start_and_stop(side, container_id, bundle)
        finally:
            os.close(log_fd)
        shutil.rmtree(bundle)

    def _start_and_stop(self, side: str, container_id: str, bundle: Path) -> None:
        binary = shutil.which(RUNC_SHIM) if side == "runc" else self.proxies[side].binary
        assert binary is not None
        argv = [binary, "-namespace", NAMESPACE, "-address", self.containerd.address]
        argv += ["-publish-binary", shutil.which("containerd") or "containerd", "-id", container_id]
        env = {**os.environ, "TTRPC_ADDRESS": self.containerd.ttrpc_address}
        env[CONFIG_ENV] = str(self.directory / "proxy.toml")
        env["PWD"] = str(bundle)
        # In containerd's mount namespace, so the sockets land under its private /run like a real shim's.
        cpu = _children_cpu()
        seconds, done = _timed([*self._nsenter(bundle), *argv, "start"], env=env, stdin=subprocess.DEVNULL)
        cpu = _children_cpu() - cpu
        address = done.stdout.decode().strip()
        if done.returncode != 0 or not address.startswith("unix://"):
            raise RuntimeError(f"{side} start failed ({done.returncode}): {done.stdout!r} {done.stderr!r}")
        self.add(side, "start ms", _ms(seconds))
        self.add(side, "start CPU ms", _ms(cpu))
        self.add(side, "start + first answer ms", _ms(seconds + self._first_answer(address)))
        self._shutdown(address, container_id)
        # The delete action alone, as containerd runs it after a shim went away (here: after Shutdown).
        cpu = _children_cpu()
        seconds, done = _timed([*self._nsenter(bundle), *argv, "-bundle", str(bundle), "delete"], env=env)
        cpu = _children_cpu() - cpu
        if done.returncode != 0:
            raise RuntimeError(f"{side} delete failed ({done.returncode}): {done.stderr!r}")
        self.add(side, "delete action ms", _ms(seconds))
        self.add(side, "delete action CPU ms", _ms(cpu))

    def _first_answer(self, address: str) -> float:
        """Seconds from connecting to ``address`` until Task/Connect is answered, right after start exited:
        what containerd's first call (Create) waits for beyond the start action (our serving process's
        own start-up). Dialled through /proc/PID/root, the socket being in containerd's mount namespace."""
        path = f"/proc/{self.containerd.pid}/root{address.removeprefix('unix://')}"
        began = time.perf_counter()
        with SyncClient(f"unix://{path}", timeout=10.0) as client:
            client.call(TASK_SERVICE, "Connect", b"", metadata={NAMESPACE_KEY: NAMESPACE})
        return time.perf_counter() - began

    def _shutdown(self, address: str, container_id: str) -> None:
        """Shutdown over the printed address (in containerd's namespace), then wait for the socket to go."""
        script = (
            "import sys\n"
            "from shimstats._proto.containerd.task.v2 import shim_pb2\n"
            "from shimstats.fake_containerd import NAMESPACE_KEY\n"
            "from shimstats.ttrpc import SyncClient, TtrpcError, TransportError\n"
            "try:\n"
            "    with SyncClient(sys.argv[1]) as c:\n"
            "        c.call('containerd.task.v2.Task', 'Shutdown',\n"
            "               shim_pb2.ShutdownRequest(id=sys.argv[2]).SerializeToString(),\n"
            "               metadata={NAMESPACE_KEY: sys.argv[3]})\n"
            "except (TtrpcError, TransportError, OSError):\n"
            "    pass  # the shim exits while answering\n"
        )
        subprocess.run(
            [*self._nsenter(REPO), sys.executable, "-c", script, address, container_id, NAMESPACE],
            cwd=REPO,
            check=False,
            capture_output=True,
        )
        deadline = time.monotonic() + 10
        while any(_serving_pid(container_id, side) for side in ("runc", "proxy")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{container_id}: the shim did not exit after Shutdown")
            time.sleep(0.02)

    # -- a container's life through containerd ------------------------------------------------

    def container(self, side: str) -> None:
        container_id = self._next_id("c")
        home = self.directory / "containers" / container_id
        rootfs = busybox_rootfs(home / "rootfs")
        agent = AgentProcess(
            self._agent_dir(container_id), ["--container", f"{container_id}=/{NAMESPACE}/{container_id}"]
        )
        if side != "runc":
            agent.start()
        runtime = RUNC_RUNTIME if side == "runc" else self.proxies[side].runtime
        try:
            seconds, done = _timed(
                ["ctr", "--address", self.containerd.address, "--namespace", NAMESPACE, "run", "--detach",
                 "--runtime", runtime, "--env", "PATH=/bin", "--log-uri", f"file://{home}/output.log",
                 "--rootfs", str(rootfs), container_id, "sleep", "3600"]
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"ctr run ({side}) failed: {done.stderr.decode().strip()}")
            self.add(side, "ctr run ms", _ms(seconds))
            self._rss(side, container_id, "")
            self.containerd.ctr("task", "metrics", container_id, namespace=NAMESPACE)
            self._rss(side, container_id, " after Stats")
            self.containerd.ctr("task", "kill", "-s", "KILL", container_id, namespace=NAMESPACE)
            self._wait_stopped(container_id)
            seconds, done = _timed(
                ["ctr", "--address", self.containerd.address, "--namespace", NAMESPACE, "task", "delete",
                 container_id]
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"ctr task delete ({side}) failed: {done.stderr.decode().strip()}")
            self.add(side, "ctr task delete ms", _ms(seconds))
            self.containerd.ctr("container", "delete", container_id, namespace=NAMESPACE)
        finally:
            if agent.process is not None:
                agent.kill()
        shutil.rmtree(home, ignore_errors=True)

    def _agent_dir(self, container_id: str) -> Path:
        path = self.directory / "a" / container_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _rss(self, side: str, container_id: str, when: str) -> None:
        pid = _serving_pid(container_id, side)
        status = _status_kb(pid) if pid else {}
        if not status:
            raise RuntimeError(f"{side}: no serving process found for {container_id}")
        self.add(side, f"RSS MB{when}", status["VmRSS"] / 1024)
        self.add(side, f"RssAnon MB{when}", status["RssAnon"] / 1024)

    def _wait_stopped(self, container_id: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            listing = self.containerd.ctr("task", "ls", namespace=NAMESPACE).stdout
            rows = [line.split() for line in listing.splitlines()[1:]]
            if any(row[0] == container_id and row[-1] == "STOPPED" for row in rows if row):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{container_id} did not stop: {listing}")
            time.sleep(0.05)


def _spread(values: Sequence[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}"


def report(bench: Bench, rounds: int) -> None:
    targets = {
        "start ms": START_TARGET_MS,
        "ctr run ms": START_TARGET_MS,
        "ctr task delete ms": DELETE_TARGET_MS,
        "delete action ms": DELETE_TARGET_MS,
    }
    sides = " / ".join(bench.sides)
    print(f"\n{rounds} rounds, alternating {sides}; A = runc shim alone, B = the proxy named on each line")
    print(
        f"{'figure':<22}{'side':>8}{'A p50':>9}{'A range':>15}{'B p50':>9}{'B range':>17}{'B-A':>9}{'B/A':>7}"
    )
    for what, runc in bench.samples["runc"].items():
        for side in bench.sides[1:]:
            proxy = bench.samples[side].get(what, [])
            if not proxy:
                continue
            a, b = statistics.median(runc), statistics.median(proxy)
            line = f"{what:<22}{side:>8}{a:>9.1f}{_spread(runc):>15}{b:>9.1f}{_spread(proxy):>17}"
            line += f"{b - a:>+9.1f}{b / a:>7.2f}"
            if what in targets:
                line += (
                    f"  target B-A <= +{targets[what]:g}: {'met' if b - a <= targets[what] else 'NOT met'}"
                )
            elif what.startswith("RSS MB"):
                line += f"  target B <= {RSS_TARGET_MB:g} MB: {'met' if b <= RSS_TARGET_MB else 'NOT met'}"
            print(line)


@dataclass(frozen=True)
class Proxy:
    """One proxy under test: its console script, the containerd runtime name that finds it."""

    binary: str
    runtime: str


def _launcher(directory: Path, name: str, source: Path) -> str:
    """What a user installs: ``shimstats install-shim`` of the checkout at ``source`` (run by the same
    interpreter), written as ``directory/name``; a checkout without that command gets pip's console script."""
    if (source / "shimstats" / "proxy" / "launcher.py").exists():
        done = subprocess.run(
            [sys.executable, "-c", "from shimstats.proxy.launcher import write_launcher as w; import sys; "
             "print(w(sys.argv[1], name=sys.argv[2]))", str(directory), name],
            env={**os.environ, "PYTHONPATH": str(source)}, cwd="/", capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        return done.stdout.strip()
    return _console_script(directory / name, source)


def _console_script(path: Path, source: Path) -> str:
    """As pip installs it: a script importing shimstats.proxy.cli, here from ``source`` first (also for a
    serving process that start runs as ``python -m``)."""
    path.write_text(
        f"#!{sys.executable}\nimport os, sys\nsys.path.insert(0, {str(source)!r})\n"
        f"os.environ['PYTHONPATH'] = {str(source)!r}\n"
        "from shimstats.proxy import cli\n"
        "sys.exit(getattr(cli, 'run', cli.main)())  # run: the entry point since issue 16\n"
    )
    path.chmod(0o755)
    return str(path)


def _compile(source: Path) -> None:
    """Byte-compile the checkout, as pip does at install: a shim run with PYTHONDONTWRITEBYTECODE set (as
    on this machine) would otherwise compile every module of ours again on each start and delete."""
    trees = [str(source / package) for package in ("shimstats", "guest_agent")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j0", *trees], check=True, cwd="/")


@contextlib.contextmanager
def environment(before: Path | None = None) -> Iterator[tuple[Containerd, Path, dict[str, Proxy]]]:
    """A private containerd whose PATH finds our shim (and the ``before`` one); one proxy config."""
    for source in (REPO, before) if before is not None else (REPO,):
        _compile(source)
    with short_tmp() as directory:
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        proxies = {"proxy": Proxy(_launcher(bin_dir, BINARY, REPO), RUNTIME_TYPE)}
        if before is not None:  # containerd finds io.containerd.<name>.v2 as containerd-shim-<name>-v2
            script = _launcher(bin_dir, "containerd-shim-kata-statsbefore-v2", before)
            proxies["before"] = Proxy(script, "io.containerd.kata-statsbefore.v2")
        agent = f"unix://{directory}/a/{{id}}/agent.sock"
        config = directory / "proxy.toml"
        config.write_text(f'inner_shim = "{RUNC_SHIM}"\nagent = "{agent}"\nmetrics_format = "v1"\n')
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}", CONFIG_ENV: str(config)}
        with Containerd(env=env) as containerd:
            yield containerd, directory, proxies


_NO_SSL = "import sys; sys.modules['ssl'] = None; "
IMPORT_STAGES = (
    ("interpreter and site", ["-c", "pass"]),
    ("interpreter without site (-S)", ["-S", "-c", "pass"]),
    ("start/delete: shimstats.proxy.cli", ["-c", "import shimstats.proxy.cli"]),
    ("  + asyncio without ssl", ["-c", "import shimstats.proxy.cli; " + _NO_SSL + "import asyncio"]),
    ("  + asyncio with ssl", ["-c", "import shimstats.proxy.cli, asyncio"]),
    (
        "  + serving on asyncio (older trees): proxy.daemon",
        ["-c", "import shimstats.proxy.cli; " + _NO_SSL + "import shimstats.proxy.daemon"],
    ),
    (
        "  + its first Stats (older trees): adapter",
        ["-c", "import shimstats.proxy.cli; " + _NO_SSL + "import shimstats.proxy.daemon, shimstats.adapter"],
    ),
    ("  + serving on threads: proxy.relay", ["-c", "import shimstats.proxy.cli, shimstats.proxy.relay"]),
    (
        "  + relay, first Stats: agent, translate",
        [
            "-c",
            "import shimstats.proxy.cli, shimstats.proxy.relay, shimstats.agent_blocking, "
            "shimstats.stats_answer, shimstats._proto.containerd.task.v2.shim_pb2",
        ],
    ),
)
"""What each step of the proxy's imports costs, cumulative (python -X importtime names the modules)."""


def import_costs(source: Path, repeat: int = 9) -> None:
    """CPU (user + system) of a fresh interpreter doing each stage's imports, median of ``repeat``."""
    print(f"\n{source}: imports, CPU ms of a fresh interpreter (median, min of {repeat}), RSS at the end")
    env = {**os.environ, "PYTHONPATH": str(source)}
    report = "; print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmRSS')][0])"
    for label, args in IMPORT_STAGES:
        spent, rss = [], ""
        for _ in range(repeat):
            before = _children_cpu()
            argv = [sys.executable, *args[:-1], args[-1] + report]
            # cwd /: ``python -c`` puts the working directory first on sys.path, ahead of PYTHONPATH
            done = subprocess.run(argv, env=env, capture_output=True, cwd="/")
            spent.append(_ms(_children_cpu() - before))
            rss = done.stdout.decode().strip()
        if done.returncode != 0:  # a stage whose modules this tree does not have (an older checkout)
            print(f"{label:<40}{'(not in this tree)':>16}")
            continue
        print(f"{label:<40}{statistics.median(spent):>8.1f}{min(spent):>8.1f}   RSS {int(rss) / 1024:.1f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="A/B rounds (default 10)")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="also measure the proxy of another checkout in the same rounds, e.g. an older commit's "
        "`git archive` (a third side, 'before')",
    )
    parser.add_argument("--imports", action="store_true", help="only the CPU cost of each import stage")
    args = parser.parse_args(argv)
    if args.imports:
        for source in (REPO, args.before) if args.before else (REPO,):
            import_costs(source)
        return 0
    with environment(args.before) as (containerd, directory, proxies):
        bench = Bench(containerd, directory, proxies)
        for side in bench.sides:  # warm-up: page cache, byte-compiled modules, containerd's first-run work
            bench.start_action(side)
            bench.container(side)
        bench.samples = {side: {} for side in bench.sides}
        for index in range(args.rounds):
            for side in bench.sides:
                bench.start_action(side)
                bench.container(side)
            print(f"round {index + 1}/{args.rounds} done", file=sys.stderr)
        report(bench, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
