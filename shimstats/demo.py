"""The whole path on this machine in one go: a real cgroup with page cache, the guest agent, our adapter,
then verify and compare on it, and the cgroup v2 guest case replayed from a real kernel capture.

Everything the demo creates is registered with a Cleanup as soon as it exists and undone in reverse order,
on success, on error, on Ctrl-C and on SIGTERM: child processes (the workload, guest agents, adapters),
the cgroup directories, the page-cache file, the socket directory. Child processes also get SIGTERM from
the kernel should the demo die without cleaning up (PR_SET_PDEATHSIG), and the workload exits by itself
when its stdin, a pipe from the demo, closes.

A demo killed outright (SIGKILL, OOM) cannot clean up. Everything it makes is named after its pid (the
cgroup ``shimstats-demo-PID``, the directories ``ss-PID-*`` and ``ss-demo-PID-*``), so the next run removes
what runs whose pid is gone left behind, and never touches a live run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import shimstats
from guest_agent.layout import CONTROLLERS, LayoutError, detect_layout
from shimstats import data
from shimstats.compare import Comparison, compare
from shimstats.fake_containerd import DEFAULT_NAMESPACE
from shimstats.ground_truth import AgentSource, CgroupSource, GroundTruth
from shimstats.verify import DEFAULT_TOLERANCE, Verification, verify

PAGE_CACHE_BYTES = 200 << 20
"""Written to a file on a disk filesystem: page cache the cgroup is charged for."""
REREAD_BYTES = 64 << 20
"""Read back twice, so these pages move to the active list (the rest stays inactive)."""
ANON_BYTES = 16 << 20
"""Touched anonymous memory, so rss is not zero."""
START_TIMEOUT = 15.0
"""Seconds a child process gets to start listening, and the workload to build its page cache."""
STOP_TIMEOUT = 3.0
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"})
"""Page cache on these is shmem, not file cache: the workload needs a disk-backed filesystem."""

WORKLOAD = """\
import os, sys
path, size, reread, anon = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if sys.stdin.readline().strip() != "go":
    sys.exit(1)
heap = b"\\x5a" * anon
chunk = b"\\0" * (1 << 20)
with open(path, "wb") as f:
    for _ in range(size >> 20):
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
for _ in range(2):
    with open(path, "rb") as f:
        left = reread
        while left > 0:
            data = f.read(min(1 << 20, left))
            if not data:
                break
            left -= len(data)
print("ready", flush=True)
sys.stdin.read()
"""
"""The workload: waits for "go" (sent once it is in the cgroup), builds anon memory and page cache, says
"ready" and then waits for its stdin to close."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop and clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


@dataclass
class Cleanup:
    """Undo actions, run last-registered first; each runs once, and one failing does not stop the others."""

    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def push(self, what: str, action: Callable[[], None]) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        """Undo everything with SIGINT and SIGTERM ignored, so a second Ctrl-C cannot cut cleanup short."""
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.actions:
                what, action = self.actions.pop()
                try:
                    action()
                except Exception as exc:
                    self.problems.append(f"{what}: {exc}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


_RECEIVED: list[int] = []
"""Signals seen by on_signal. Python swallows an exception raised by a signal handler in some places (an
at-fork hook while a child is spawned, a __del__), so checkpoint() raises again for any signal seen."""


def on_signal(signum: int, frame: FrameType | None) -> None:
    """The SIGINT/SIGTERM handler while the demo runs: remember the signal, and stop right here."""
    _RECEIVED.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while a resource is created and registered for cleanup together."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def checkpoint() -> None:
    """Raise Interrupted if a signal arrived whose exception was swallowed on the way."""
    if _RECEIVED:
        raise Interrupted(_RECEIVED[0])


# -- child processes ------------------------------------------------------------------------------------


def _child_setup() -> None:
    """In the child before exec: get SIGTERM when the demo dies (Linux PR_SET_PDEATHSIG), and let through
    the signals signals_held() blocked in the demo (a signal mask survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def child_env() -> dict[str, str]:
    """The demo's environment, with this very shimstats on PYTHONPATH (a source checkout works too)."""
    env = dict(os.environ)
    root = str(Path(shimstats.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class Child:
    """A child process, its log file and, for servers, the unix socket it listens on."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    socket: Path | None = None

    def log_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-2000:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """Close stdin (the workload exits on that), SIGTERM, SIGKILL after STOP_TIMEOUT; always reaped."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


def spawn(
    name: str, argv: Sequence[str], workdir: Path, cleanup: Cleanup, *, stdin: int | None = None
) -> Child:
    """Start ``argv`` in its own session (Ctrl-C reaches only the demo, which then stops it in order)."""
    log = workdir / f"{name}.log"
    with signals_held(), open(log, "wb") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        child = Child(name, process, log)
        cleanup.push(f"stop {name} (pid {process.pid})", child.stop)
    checkpoint()
    return child


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def wait_listening(children: Sequence[Child], timeout: float = START_TIMEOUT) -> None:
    """Block (bounded) until every child's socket accepts; DemoError naming one that died or hung."""
    deadline = time.monotonic() + timeout
    waiting = [c for c in children if c.socket is not None]
    while waiting:
        for child in list(waiting):
            assert child.socket is not None
            if child.process.poll() is not None:
                raise DemoError(f"{child.name} exited with {child.process.returncode}: {child.log_tail()}")
            if _accepts(child.socket):
                waiting.remove(child)
        if waiting and time.monotonic() > deadline:
            raise DemoError(f"{waiting[0].name} did not listen within {timeout:g}s: {waiting[0].log_tail()}")
        if waiting:
            checkpoint()
            time.sleep(0.02)


def agent_argv(
    sock: Path,
    container_id: str,
    cgroup_path: str,
    fixture_root: Path | None = None,
    meminfo: Path | None = None,
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "guest_agent",
        "--listen",
        f"unix://{sock}",
        "--log-level",
        "warning",
        "--container",
        f"{container_id}={cgroup_path}",
    ]
    if fixture_root is not None:
        argv += ["--cgroupfs-root", str(fixture_root)]
    if meminfo is not None:
        argv += ["--meminfo", str(meminfo)]
    return argv


def adapter_argv(sock: Path, agent_sock: Path, metrics_format: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shimstats.cli",
        "serve",
        "--listen",
        f"unix://{sock}",
        "--agent",
        f"unix://{agent_sock}",
        "--metrics-format",
        metrics_format,
    ]


# -- names after our pid, and what dead runs left ----------------------------------------------------------

WORK_PARENT = "/tmp"
"""Where the socket directory goes: short, for unix socket paths."""
_MKDTEMP_SUFFIX = "[a-z0-9_]{8}"  # what tempfile.mkdtemp appends
_WORKDIR = re.compile(rf"ss-([0-9]+)-{_MKDTEMP_SUFFIX}")
_DATADIR = re.compile(rf"ss-demo-([0-9]+)-{_MKDTEMP_SUFFIX}")
_CGROUP = re.compile(r"shimstats-demo-([0-9]+)")


def workdir_prefix(pid: int) -> str:
    """mkdtemp prefix of a run's socket directory (in WORK_PARENT)."""
    return f"ss-{pid}-"


def datadir_prefix(pid: int) -> str:
    """mkdtemp prefix of a run's page-cache directory (in one of data_parents())."""
    return f"ss-demo-{pid}-"


def cgroup_name(pid: int) -> str:
    return f"shimstats-demo-{pid}"


def data_parents() -> list[str]:
    """Where the page-cache file may go, in order of preference (the first disk filesystem with room)."""
    return [tempfile.gettempdir(), "/var/tmp", os.getcwd()]


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (even one we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_runs_directories(parents: Sequence[str]) -> list[tuple[int, Path]]:
    """(pid, path) of our leftover directories in ``parents`` whose run is gone: named by our rule, real
    directories (not symlinks), owned by us."""
    found: list[tuple[int, Path]] = []
    for parent in dict.fromkeys(parents):
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            match = _WORKDIR.fullmatch(entry.name) or _DATADIR.fullmatch(entry.name)
            if match is None or pid_alive(int(match.group(1))):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                found.append((int(match.group(1)), Path(entry.path)))
    return found


def _dead_runs_cgroups(root: str) -> list[tuple[int, Path]]:
    """(pid, path) of our leftover cgroups, in every hierarchy under ``root``, whose run is gone."""
    try:
        layout = detect_layout(root)
    except LayoutError:
        return []
    hierarchies = {Path(os.path.realpath(layout.controllers[c].dir_for("/"))) for c in layout.controllers}
    found: list[tuple[int, Path]] = []
    for hierarchy in sorted(hierarchies):
        for entry in sorted(hierarchy.glob("shimstats-demo-*")):
            match = _CGROUP.fullmatch(entry.name)
            if match is not None and entry.is_dir() and not pid_alive(int(match.group(1))):
                found.append((int(match.group(1)), entry))
    return found


def _empty_and_remove(cgroup: Path) -> None:
    """Kill what is still in a dead run's cgroup (its workload, should it have outlived the run), rmdir it."""
    with contextlib.suppress(OSError):
        for line in (cgroup / "cgroup.procs").read_text(encoding="ascii").split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)
    remove_cgroup(cgroup)


def remove_dead_runs(
    cgroup_root: str = "/sys/fs/cgroup",
    work_parents: Sequence[str] | None = None,
) -> list[str]:
    """Remove the cgroups and directories left by demo runs whose pid is gone; one note per run (what was
    removed) and one per thing that could not be."""
    parents = [WORK_PARENT, *data_parents()] if work_parents is None else list(work_parents)
    undo: list[tuple[int, Path, Callable[[Path], None]]] = [
        (pid, path, _empty_and_remove) for pid, path in _dead_runs_cgroups(cgroup_root)
    ]
    undo += [(pid, path, shutil.rmtree) for pid, path in _dead_runs_directories(parents)]
    removed: dict[int, list[str]] = {}
    failed: list[str] = []
    for pid, path, remove in undo:
        try:
            remove(path)
        except OSError as exc:
            failed.append(f"could not remove {path}, left by demo run {pid} that is gone: {exc}")
            continue
        removed.setdefault(pid, []).append(str(path))
    notes = [f"removed what demo run {pid} (gone) left: {', '.join(paths)}" for pid, paths in removed.items()]
    return notes + failed


# -- the live cgroup and its workload ---------------------------------------------------------------------


@dataclass
class DemoCgroup:
    """A child cgroup in every hierarchy of memory, cpu, cpuacct, pids and blkio found on this machine."""

    path: str
    """The cgroup path, as /proc/PID/cgroup shows it (``/shimstats-demo-123``)."""
    memory_dir: Path
    directories: list[Path]
    controllers: tuple[str, ...]

    @classmethod
    def create(cls, name: str, cleanup: Cleanup, root: str = "/sys/fs/cgroup") -> DemoCgroup:
        """mkdir the cgroup everywhere (each registered for removal at once); OSError if not allowed."""
        try:
            layout = detect_layout(root)
        except LayoutError as exc:
            raise OSError(str(exc)) from exc
        if "memory" not in layout.controllers:
            raise OSError(f"no memory controller under {root}")
        path = "/" + name
        directories: list[Path] = []
        controllers = [c for c in CONTROLLERS if c in layout.controllers and c != "hugetlb"]
        for controller in controllers:
            directory = Path(os.path.realpath(layout.controllers[controller].dir_for(path)))
            if directory in directories:
                continue  # cpu and cpuacct share one hierarchy, or v2 has one for all
            with signals_held():
                directory.mkdir()
                directories.append(directory)
                cleanup.push(f"remove cgroup {directory}", functools.partial(remove_cgroup, directory))
        return cls(path, Path(layout.controllers["memory"].dir_for(path)), directories, tuple(controllers))

    def add(self, pid: int) -> None:
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(pid), encoding="ascii")


def remove_cgroup(directory: Path, timeout: float = STOP_TIMEOUT) -> None:
    """rmdir a cgroup whose processes are gone (the kernel may need a moment after they exit)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            point = before.split(" ")[4].replace("\\040", " ")
            found.append((point, after.split(" ")[0]))
    return found


def filesystem_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point that contains it)."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for point, fstype in _mounts():
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def disk_directory(candidates: Sequence[str], needed: int) -> tuple[str, str] | None:
    """The first candidate directory on a disk filesystem with room for ``needed`` bytes, and its type."""
    for candidate in candidates:
        if not os.path.isdir(candidate) or not os.access(candidate, os.W_OK):
            continue
        kind = filesystem_type(candidate)
        free = os.statvfs(candidate)
        if kind not in MEMORY_FILESYSTEMS and free.f_bavail * free.f_frsize >= 2 * needed:
            return candidate, kind
    return None


@dataclass(frozen=True)
class Workload:
    """What the live workload did, for the report."""

    file: Path
    filesystem: str
    pid: int


def start_workload(
    cgroup: DemoCgroup, directory: str, filesystem: str, workdir: Path, cleanup: Cleanup
) -> Workload:
    """Start the workload, move it into the cgroup before it allocates anything, wait until it is ready."""
    with signals_held():
        datadir = Path(tempfile.mkdtemp(prefix=datadir_prefix(os.getpid()), dir=directory))
        cleanup.push(f"remove {datadir}", functools.partial(shutil.rmtree, datadir))
    target = datadir / "page-cache.bin"
    argv = [
        sys.executable,
        "-I",
        "-c",
        WORKLOAD,
        str(target),
        str(PAGE_CACHE_BYTES),
        str(REREAD_BYTES),
        str(ANON_BYTES),
    ]
    child = spawn("workload", argv, workdir, cleanup, stdin=subprocess.PIPE)
    assert child.process.stdin is not None
    cgroup.add(child.process.pid)
    child.process.stdin.write(b"go\n")
    child.process.stdin.flush()
    deadline = time.monotonic() + START_TIMEOUT
    while "ready" not in child.log_tail():
        if child.process.poll() is not None:
            raise DemoError(f"the workload exited with {child.process.returncode}: {child.log_tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"the workload was not ready within {START_TIMEOUT:g}s")
        checkpoint()
        time.sleep(0.02)
    return Workload(target, filesystem, child.process.pid)


# -- the cases --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a case needs: the container, where its files are, and the sockets serving it."""

    key: str
    title: str
    details: tuple[str, ...]
    container_id: str
    cgroup_dir: Path
    meminfo: Path
    agent: Child
    adapters: dict[str, Child]


@dataclass(frozen=True)
class Case:
    """One container examined end to end: verify against each adapter, compare across every mapping."""

    setup: Setup
    verifications: dict[str, Verification]
    comparison: Comparison

    @property
    def truth(self) -> GroundTruth:
        """The cgroup's own files, read right after the v1 adapter answered."""
        return self.verifications["v1"].after

    @property
    def ok(self) -> bool:
        """Our adapter verifies in both formats, and our translation agrees with the guest's figures."""
        ours = [c for c in self.comparison.columns if c.key.startswith("ours_")]
        return all(v.ok for v in self.verifications.values()) and all(
            c.verification is not None and c.verification.ok for c in ours
        )


def start_servers(
    key: str,
    container_id: str,
    cgroup_path: str,
    workdir: Path,
    cleanup: Cleanup,
    fixture_root: Path | None = None,
    meminfo: Path | None = None,
) -> tuple[Child, dict[str, Child]]:
    """A guest agent for the container and one adapter per Metrics format in front of it (not yet ready)."""
    agent_sock = workdir / f"{key}-agent.sock"
    agent = spawn(
        f"{key} guest agent",
        agent_argv(agent_sock, container_id, cgroup_path, fixture_root, meminfo),
        workdir,
        cleanup,
    )
    agent.socket = agent_sock
    adapters = {}
    for fmt in ("v1", "v2"):
        sock = workdir / f"{key}-{fmt}.sock"
        adapters[fmt] = spawn(f"{key} adapter ({fmt})", adapter_argv(sock, agent_sock, fmt), workdir, cleanup)
        adapters[fmt].socket = sock
    return agent, adapters


async def examine(setup: Setup, timeout: float = 5.0) -> Case:
    """verify each adapter against the cgroup's files, then compare one agent answer across every mapping."""
    verifications = {}
    for fmt, adapter in setup.adapters.items():
        source = CgroupSource(str(setup.cgroup_dir), meminfo=str(setup.meminfo))
        try:
            verifications[fmt] = await verify(
                f"unix://{adapter.socket}",
                setup.container_id,
                source,
                namespace=DEFAULT_NAMESPACE,
                tolerance=DEFAULT_TOLERANCE,
                timeout=timeout,
            )
        finally:
            await source.close()
    agent = AgentSource(f"unix://{setup.agent.socket}", setup.container_id, timeout=timeout)
    try:
        comparison = await compare(
            setup.container_id,
            agent,
            shim=f"unix://{setup.adapters['v1'].socket}",
            namespace=DEFAULT_NAMESPACE,
            tolerance=DEFAULT_TOLERANCE,
            timeout=timeout,
        )
    finally:
        await agent.close()
    return Case(setup, verifications, comparison)


@dataclass(frozen=True)
class Report:
    """Everything the demo found; ``notes`` say what was skipped and why."""

    cases: tuple[Case, ...]
    notes: tuple[str, ...]
    workdir: Path

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.ok for c in self.cases)


def live_setup(workdir: Path, cleanup: Cleanup, notes: list[str]) -> Callable[[], Setup] | None:
    """Create the live cgroup and start its workload and servers; None (with a note) where not possible.

    Returns a function that finishes the setup once the servers listen, so that both cases start their
    processes before either waits.
    """
    if os.geteuid() != 0:
        notes.append("not root: cannot create a cgroup here, so only the bundled capture is shown")
        return None
    place = disk_directory(data_parents(), PAGE_CACHE_BYTES)
    if place is None:
        notes.append(
            "no disk filesystem with room for the page-cache file: only the bundled capture is shown"
        )
        return None
    name = cgroup_name(os.getpid())
    try:
        cgroup = DemoCgroup.create(name, cleanup)
    except OSError as exc:
        notes.append(f"cannot create a cgroup here ({exc}): only the bundled capture is shown")
        return None
    agent, adapters = start_servers("live", name, cgroup.path, workdir, cleanup)
    workload = start_workload(cgroup, place[0], place[1], workdir, cleanup)
    version = "v1" if detect_layout().controllers["memory"].version == 1 else "v2"
    details = (
        f"cgroup {cgroup.path} ({', '.join(cgroup.controllers)}; memory at {cgroup.memory_dir})",
        f"workload (pid {workload.pid}): {PAGE_CACHE_BYTES >> 20} MiB written to {workload.file} "
        f"({workload.filesystem}) and synced, its first {REREAD_BYTES >> 20} MiB read twice, "
        f"{ANON_BYTES >> 20} MiB of anonymous memory",
    )

    def ready() -> Setup:
        wait_listening([agent, *adapters.values()])
        title = f"live: a cgroup {version} container on this machine"
        return Setup("live", title, details, name, cgroup.memory_dir, Path("/proc/meminfo"), agent, adapters)

    return ready


def replay_setup(workdir: Path, cleanup: Cleanup, notes: list[str]) -> Callable[[], Setup] | None:
    """Serve the bundled cgroup v2 capture through a guest agent and both adapters (None, with a note,
    when this installation lacks it)."""
    try:
        fx = data.fixture()
    except (OSError, ValueError, KeyError) as exc:
        notes.append(f"the bundled cgroup v2 capture is missing from this installation ({exc})")
        return None
    agent, adapters = start_servers(
        "replay",
        fx.container_id,
        fx.container_path,
        workdir,
        cleanup,
        fixture_root=fx.cgroupfs_root,
        meminfo=fx.meminfo,
    )
    details = (
        f"replayed from a real {'.'.join(fx.kernel.split('.')[:2])} kernel capture: {fx.name} "
        f"(kernel {fx.kernel})",
        f"workload: {fx.workload}",
    )

    def ready() -> Setup:
        wait_listening([agent, *adapters.values()])
        title = "replay: a cgroup v2 guest (the case Kata's shims get wrong on a v1 host)"
        return Setup("replay", title, details, fx.container_id, fx.container_dir, fx.meminfo, agent, adapters)

    return ready


def run(cleanup: Cleanup, workdir: Path) -> Report:
    """Remove what killed runs left, set both cases up (processes start in parallel), then examine each."""
    notes = remove_dead_runs()
    pending = [p for p in (live_setup(workdir, cleanup, notes), replay_setup(workdir, cleanup, notes)) if p]
    cases = tuple(asyncio.run(examine(ready())) for ready in pending)
    checkpoint()
    return Report(cases, tuple(notes), workdir)
