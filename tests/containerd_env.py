"""A real containerd + runc for the tests: a Go ttrpc server (the runc shim) to interoperate with.

Debian's containerd 1.6 puts shim sockets under the hard-coded /run/containerd, so each instance runs
in its own mount namespace with a private directory bind-mounted over /run; everything else (root,
state, sockets) lives in one temp directory. From outside the namespace that directory is reached
through ``run_dir`` (the bind source). Stopping leaves nothing behind: no process, no mount namespace,
no cgroup directory this instance caused, no temp directory.

Also a command line for humans (hack/containerd-up.sh, hack/containerd-down.sh):
``python -m tests.containerd_env up|down DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

INSTALL_HINT = "install them with: sudo bash hack/ci-install.sh"
#: Executables an instance needs (unshare: util-linux; the rest: containerd, runc, busybox-static).
REQUIRED_BINARIES = ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "unshare")
BUSYBOX = Path("/bin/busybox")
DEFAULT_NAMESPACE = "shimstats-test"

#: A workload with a known page cache: write PAGE_CACHE_BYTES to a file in the rootfs, read it back
#: (so the pages are active file cache), print READY_MARKER, then sleep until killed.
PAGE_CACHE_BYTES = 50 * 1024 * 1024
READY_MARKER = "shimstats-ready"
PAGE_CACHE_COMMAND = (
    "sh", "-c",
    f"dd if=/dev/zero of=/cache.bin bs=1M count={PAGE_CACHE_BYTES // (1024 * 1024)} 2>/dev/null"
    f" && cat /cache.bin >/dev/null && echo {READY_MARKER} && exec sleep 3600",
)  # fmt: skip

#: Write WRITE_MIB once (inactive file cache) and read the first READ_MIB back twice (active), print
#: READY_MARKER, then sleep: the working set and the usage then differ by about WRITE_MIB - READ_MIB, so
#: whether a working set left inactive_file out shows.
WRITE_MIB, READ_MIB = 64, 16
SPLIT_CACHE_COMMAND = (
    "sh", "-c",
    f"dd if=/dev/zero of=/cache.bin bs=1M count={WRITE_MIB} 2>/dev/null && sync"
    f" && dd if=/cache.bin of=/dev/null bs=1M count={READ_MIB} 2>/dev/null"
    f" && dd if=/cache.bin of=/dev/null bs=1M count={READ_MIB} 2>/dev/null"
    f" && echo {READY_MARKER} && exec sleep 3600",
)  # fmt: skip

#: containerd's identifier rule (namespaces, container ids); it also keeps ids safe to use in paths.
_IDENTIFIER = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_IDENTIFIER_MAX = 76
#: Plugins a test containerd does not need: CRI (wants CNI and images), snapshotters that probe the
#: host, the restart monitor, tracing, and the /opt plugin (it writes outside our directory).
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)
#: Run by sh inside the new mount namespace: our directory over /run, then containerd in place.
#: mount -n: /etc/mtab must not learn about a mount the host cannot see.
_IN_NAMESPACE = 'mount -n --bind "$1" /run && exec containerd --config "$2"'
_STATE_FILE = "instance.json"
#: Longest unix socket path a client can connect to (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: Everything an instance creates in its directory (``down`` removes these and nothing else).
_OUR_ENTRIES = (
    "root", "state", "run", "containers", "config.toml", "containerd.log",
    "containerd.sock", "containerd.sock.ttrpc", _STATE_FILE,
)  # fmt: skip
_CTR_TIMEOUT = 30.0


class ContainerdUnavailable(RuntimeError):
    """The machine cannot run a test containerd (missing binaries or not root)."""


class CtrError(RuntimeError):
    """A ctr command failed; the message carries its arguments and stderr."""


class LeftoversError(RuntimeError):
    """Stopping an instance left something behind (listed in the message)."""


def missing_binaries() -> list[str]:
    """The required executables (and /bin/busybox) that are not installed."""
    missing = [name for name in REQUIRED_BINARIES if shutil.which(name) is None]
    if not BUSYBOX.is_file():
        missing.append(str(BUSYBOX))
    return missing


def unavailable_reason() -> str | None:
    """Why a test containerd cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "a test containerd needs root (mount namespaces, cgroups)"
    missing = missing_binaries()
    if missing:
        return f"missing {', '.join(missing)}; {INSTALL_HINT}"
    return None


def check_identifier(value: str, what: str) -> str:
    """Reject ids containerd would reject, before they reach a path or a command line."""
    if len(value) > _IDENTIFIER_MAX or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: must match {_IDENTIFIER.pattern}, at most {_IDENTIFIER_MAX} chars"
        )
    return value


def busybox_rootfs(directory: Path) -> Path:
    """Build a minimal root filesystem in ``directory``: /bin/busybox plus a symlink per applet."""
    if not BUSYBOX.is_file():
        raise ContainerdUnavailable(f"{BUSYBOX} not found; {INSTALL_HINT}")
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, bin_dir / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True, timeout=10
    ).stdout.split()
    for applet in applets:
        link = bin_dir / applet
        if applet != "busybox" and not os.path.lexists(link):
            link.symlink_to("busybox")
    for name in ("dev", "proc", "sys", "tmp"):
        (directory / name).mkdir(exist_ok=True)
    return directory


def _cgroup_hierarchies() -> list[tuple[Path, str, list[str]]]:
    """(mount point, "cgroup" or "cgroup2", super options) for each cgroup mount, from mountinfo."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fstype, _source, options = [*after.split(), "", ""][:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((Path(before.split(" ")[4]), fstype, options.split(",")))
    return found


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers and the v2 unified tree)."""
    return [mount for mount, _fstype, _options in _cgroup_hierarchies()]


def controller_root(controller: str) -> Path | None:
    """Mount point of the v1 hierarchy that holds ``controller`` (e.g. "cpuacct"), if one does."""
    for mount, fstype, options in _cgroup_hierarchies():
        if fstype == "cgroup" and controller in options:
            return mount
    return None


def memory_cgroup_root() -> Path:
    """Where container memory cgroups live: the v1 memory hierarchy, else the v2 unified one."""
    v1 = controller_root("memory")
    if v1 is not None:
        return v1
    for mount, fstype, _options in _cgroup_hierarchies():
        if fstype == "cgroup2":
            return mount
    raise ContainerdUnavailable("no cgroup memory hierarchy is mounted")


def shim_socket_name(address: str, namespace: str, container_id: str) -> str:
    """The file name containerd 1.6 gives a runc shim's socket: sha256 of "<address>/<ns>/<id>"."""
    return hashlib.sha256(f"{address}/{namespace}/{container_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Container:
    """A running busybox container started by :meth:`Containerd.run_busybox`."""

    id: str
    namespace: str
    shim_socket: Path  # host path of the runc shim's ttrpc socket
    memory_cgroup: Path
    pid: int  # the container's init process, as seen from the host
    log_path: Path  # the container's stdout and stderr

    def log(self) -> str:
        """What the container printed so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        """Block (bounded) until the container has printed ``text``."""
        if not _wait_until(lambda: text in self.log(), timeout):
            raise TimeoutError(
                f"container {self.id} did not print {text!r} within {timeout}s: {self.log()!r}"
            )


@dataclass
class _State:
    """What ``down`` needs to find and undo an instance, kept in the instance directory."""

    pid: int = 0
    created_cgroups: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> _State:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(pid=int(data["pid"]), created_cgroups=[str(p) for p in data["created_cgroups"]])

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"pid": self.pid, "created_cgroups": self.created_cgroups}), encoding="utf-8"
        )
        tmp.replace(path)


class Containerd:
    """One test containerd in its own mount namespace, under its own directory.

    Use as a context manager. ``base_dir`` (default: a fresh temp dir, removed on exit) holds the
    config, root, state, sockets, the bind source for /run, and the containers' root filesystems.
    """

    #: Plugins this instance turns off (a subclass that wants CRI drops it from the list).
    disabled_plugins: tuple[str, ...] = _DISABLED_PLUGINS

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        start_timeout: float = 10.0,
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``extra_config`` is appended to the generated config.toml; ``env`` is added to containerd's
        environment, which its shims inherit (e.g. PATH for extra runtimes, SHIMSTATS_CONFIG)."""
        self._owns_dir = base_dir is None
        # Short on purpose: host paths of shim sockets (run_dir/containerd/s/<64 hex>) must fit sun_path.
        self.base_dir = Path(tempfile.mkdtemp(prefix="ssc-", dir="/tmp")) if base_dir is None else base_dir
        self.address = str(self.base_dir / "containerd.sock")
        self.ttrpc_address = str(self.base_dir / "containerd.sock.ttrpc")
        self.run_dir = self.base_dir / "run"
        self.config_path = self.base_dir / "config.toml"
        self.log_path = self.base_dir / "containerd.log"
        self._start_timeout = start_timeout
        self._extra_config = extra_config
        self._env = dict(env) if env is not None else None
        self._state = _State()
        self._process: subprocess.Popen[bytes] | None = None
        self.mount_namespace: int | None = None  # inode of containerd's mount namespace

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """containerd's process id (0 before start)."""
        return self._state.pid

    def __enter__(self) -> Containerd:
        try:
            self.start()
        except BaseException:
            self.stop(strict=False)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(strict=exc_type is None)

    def start(self) -> None:
        """Write the config, start containerd detached, wait (bounded) until ``ctr version`` answers."""
        reason = unavailable_reason()
        if reason is not None:
            raise ContainerdUnavailable(reason)
        longest = len(str(self.run_dir / "containerd" / "s" / ("0" * 64)))
        if longest > MAX_SOCKET_PATH:
            raise ContainerdUnavailable(
                f"{self.base_dir} is too long: shim socket paths under it would have {longest} bytes, "
                f"over the {MAX_SOCKET_PATH}-byte unix socket limit; use a shorter directory"
            )
        for sub in ("root", "state", "run", "containers"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config(), encoding="utf-8")
        with open(self.log_path, "ab") as log:
            # unshare without --fork execs in place, and so does sh: the pid is containerd's.
            unshare = ["unshare", "--mount", "--propagation", "private"]
            script = ["sh", "-c", _IN_NAMESPACE, "sh", str(self.run_dir), str(self.config_path)]
            self._process = subprocess.Popen(
                [*unshare, *script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C must not kill it before we clean up
                env=None if self._env is None else {**os.environ, **self._env},
            )
        self._state.pid = self._process.pid
        self._save_state()
        self._wait_ready()
        self.mount_namespace = os.stat(f"/proc/{self.pid}/ns/mnt").st_ino

    def _config(self) -> str:
        disabled = ", ".join(json.dumps(p) for p in self.disabled_plugins)
        return (
            "version = 2\n"
            f"root = {json.dumps(str(self.base_dir / 'root'))}\n"
            f"state = {json.dumps(str(self.base_dir / 'state'))}\n"
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f"  address = {json.dumps(self.address)}\n"
            "[ttrpc]\n"
            f"  address = {json.dumps(self.ttrpc_address)}\n"
            "[debug]\n"
            '  level = "warn"\n' + self._extra_config  # below debug: shims start without -debug
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise ContainerdUnavailable(
                    f"containerd exited with {self._process.returncode}: {self._log_tail()}"
                )
            if self.ctr("version", check=False, timeout=2.0).returncode == 0:
                exe = os.readlink(f"/proc/{self.pid}/exe")
                if os.path.basename(exe) != "containerd":
                    raise ContainerdUnavailable(f"pid {self.pid} runs {exe}, expected containerd")
                return
            if time.monotonic() > deadline:
                raise ContainerdUnavailable(
                    f"containerd did not answer within {self._start_timeout}s: {self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        except FileNotFoundError:
            return "(no log)"

    def _save_state(self) -> None:
        self._state.save(self.base_dir / _STATE_FILE)

    @classmethod
    def attach(cls, base_dir: Path) -> Containerd:
        """An instance started by another process (``up``), so that it can be stopped (``down``)."""
        instance = cls(base_dir)
        instance._state = _State.load(base_dir / _STATE_FILE)
        if instance._is_ours(instance.pid):
            instance.mount_namespace = os.stat(f"/proc/{instance.pid}/ns/mnt").st_ino
        return instance

    def stop(self, *, strict: bool = True) -> None:
        """Delete every task and container, stop containerd by pid, undo cgroups and files.

        With ``strict``, raise :class:`LeftoversError` if anything survived.
        """
        leftovers: list[str] = []
        if self.pid and self._is_ours(self.pid):
            try:
                self._delete_all()
            except CtrError as e:  # a hung containerd: still stop it, and the shims below
                leftovers.append(f"tasks not deleted ({e})")
            self._stop_daemon()
        if self._process is not None:
            self._process.poll()  # reap it, also when it died on its own
        leftovers += self._kill_stray_shims()
        leftovers += self._remove_cgroups()
        leftovers += self._namespace_users()
        if self._owns_dir or (self.base_dir / _STATE_FILE).exists():
            leftovers += self._remove_dir()
        if leftovers and strict:
            raise LeftoversError("test containerd left: " + "; ".join(leftovers))

    def _delete_all(self) -> None:
        def ctr(*args: str, namespace: str | None = None) -> list[str]:
            return self.ctr(*args, namespace=namespace, check=False, timeout=10.0).stdout.split()

        for ns in ctr("namespaces", "list", "-q"):
            tasks = ctr("tasks", "list", "-q", namespace=ns)
            if tasks:
                ctr("tasks", "delete", "--force", *tasks, namespace=ns)
            containers = ctr("containers", "list", "-q", namespace=ns)
            if containers:
                ctr("containers", "delete", *containers, namespace=ns)
        # Deleting a task tells its shim to exit; give the shims a moment before containerd goes.
        _wait_until(lambda: not self.shim_pids(), timeout=5.0)

    def _stop_daemon(self) -> None:
        pid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout=5.0):
                os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, timeout=5.0)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        return _wait_until(lambda: not _alive(pid), timeout)

    def _is_ours(self, pid: int) -> bool:
        """True if ``pid`` is a live containerd running our config (guards against pid reuse)."""
        return _alive(pid) and str(self.config_path) in _cmdline(pid)

    def shim_pids(self) -> list[int]:
        """Live runc shims serving this instance (their ``-address`` is our socket)."""
        return [pid for pid in _pids() if _is_shim_of(pid, self.address) and _alive(pid)]

    def _kill_stray_shims(self) -> list[str]:
        """SIGKILL shims (and their containers' processes) that outlived containerd, by pid."""
        stray = self.shim_pids() + self._container_pids()
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not self.shim_pids() and not self._container_pids(), timeout=5.0)
        return [f"pid {pid} (killed)" for pid in stray]

    def _container_pids(self) -> list[int]:
        """Live processes in the cgroups our containers got (normally none once tasks are deleted)."""
        pids: set[int] = set()
        for path in self._state.created_cgroups:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (Path(path) / "cgroup.procs").read_text().split())
        return sorted(pid for pid in pids if _alive(pid))

    def _remove_cgroups(self) -> list[str]:
        """rmdir the cgroup directories this instance caused, deepest first (only empty ones go)."""
        ours = set(self._state.created_cgroups)
        deadline = time.monotonic() + 2.0
        left = []
        for path in sorted(ours, key=len, reverse=True):
            if _rmdir_cgroup(Path(path), deadline):
                continue
            # A namespace dir shared with another test containerd (same namespace name, running
            # now) holds its containers: that is theirs to clean, not a leftover of ours.
            if not any(child.is_dir() and str(child) not in ours for child in Path(path).iterdir()):
                left.append(f"cgroup {path}")
        self._state.created_cgroups = [p for p in self._state.created_cgroups if Path(p).exists()]
        return left

    def _namespace_users(self) -> list[str]:
        if self.mount_namespace is None:
            return []
        users = [pid for pid in _pids() if _mount_namespace(pid) == self.mount_namespace]
        return [f"pid {pid} in mount namespace {self.mount_namespace}" for pid in users]

    def _remove_dir(self) -> list[str]:
        """Remove the temp dir, or in a caller's directory only what we put there."""
        base = str(self.base_dir)
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            mounted = [line.split(" ")[4] for line in f if base in line]
        if mounted:
            return [f"mounts under {base}: {mounted}"]
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            return [f"directory {base}"] if self.base_dir.exists() else []
        for name in _OUR_ENTRIES:
            path = self.base_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        left = [name for name in _OUR_ENTRIES if (self.base_dir / name).exists()]
        with contextlib.suppress(OSError):
            self.base_dir.rmdir()  # only if nothing else was in it
        return [f"{base}/{name}" for name in left]

    # -- using it ----------------------------------------------------------------------------

    def ctr(
        self, *args: str, namespace: str | None = None, check: bool = True, timeout: float = _CTR_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``ctr --address <ours> [--namespace ns] args...``; with ``check``, raise CtrError if it fails."""
        argv = ["ctr", "--address", self.address]
        if namespace is not None:
            argv += ["--namespace", namespace]
        argv += args
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise CtrError(f"{' '.join(argv)} timed out after {timeout}s") from e
        if check and done.returncode != 0:
            raise CtrError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def run_busybox(
        self,
        container_id: str,
        command: Sequence[str],
        namespace: str = DEFAULT_NAMESPACE,
        ctr_flags: Sequence[str] = (),
    ) -> Container:
        """Run ``command`` detached in a fresh busybox rootfs (``ctr run -d --rootfs``).

        ``ctr_flags`` go before the rootfs (e.g. ``["--memory-limit", "100000000"]``). The
        container's output goes to ``Container.log_path``: ctr's default stdio would need FIFOs under
        the host's /run/containerd, outside our namespace.
        """
        check_identifier(container_id, "container id")
        check_identifier(namespace, "namespace")
        home = self.base_dir / "containers" / namespace / container_id
        rootfs = busybox_rootfs(home / "rootfs")
        log_path = home / "output.log"
        self._record_new_cgroups(namespace, container_id)
        self.ctr(
            "run", "--detach", "--env", "PATH=/bin", "--log-uri", f"file://{log_path}", *ctr_flags,
            "--rootfs", str(rootfs), container_id, *command,
            namespace=namespace,
        )  # fmt: skip
        socket = self.run_dir / "containerd" / "s" / shim_socket_name(self.address, namespace, container_id)
        if not _is_socket(socket):
            raise CtrError(f"container {container_id}: no shim socket at {socket}")
        memory_cgroup = memory_cgroup_root() / namespace / container_id
        if not memory_cgroup.is_dir():
            raise CtrError(f"container {container_id}: no memory cgroup at {memory_cgroup}")
        return Container(
            id=container_id,
            namespace=namespace,
            shim_socket=socket,
            memory_cgroup=memory_cgroup,
            pid=self._task_pid(namespace, container_id),
            log_path=log_path,
        )

    def _record_new_cgroups(self, namespace: str, container_id: str) -> None:
        """Remember the cgroup dirs runc is about to create, so that stop() removes exactly those."""
        for mount in cgroup_mounts():
            for path in (mount / namespace, mount / namespace / container_id):
                if not path.exists() and str(path) not in self._state.created_cgroups:
                    self._state.created_cgroups.append(str(path))
        self._save_state()

    def _task_pid(self, namespace: str, container_id: str) -> int:
        for line in self.ctr("tasks", "list", namespace=namespace).stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise CtrError(f"container {container_id}: no task in namespace {namespace}")

    def metrics_json(self, container: Container) -> dict[str, Any]:
        """The task's metrics as ``ctr task metrics --format json`` prints them."""
        out = self.ctr("tasks", "metrics", "--format", "json", container.id, namespace=container.namespace)
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def metrics_table(self, container: Container) -> dict[str, str]:
        """``ctr task metrics`` (table format) as METRIC -> VALUE.

        ctr prints v1 names (``memory.usage_in_bytes``) only for io.containerd.cgroups.v1.Metrics and
        v2 names (``memory.usage``) only for io.containerd.cgroups.v2.Metrics: the type the shim sent.
        """
        out = self.ctr("tasks", "metrics", container.id, namespace=container.namespace).stdout
        _header, _, table = out.partition("\n\n")
        rows = (line.split(None, 1) for line in table.splitlines()[1:])
        return {row[0]: row[1].strip() for row in rows if len(row) == 2}

    def kill(self, container: Container) -> None:
        """Delete one container and its task now (stop() would do it anyway)."""
        self.ctr("tasks", "delete", "--force", container.id, namespace=container.namespace, check=False)
        self.ctr("containers", "delete", container.id, namespace=container.namespace)
        shutil.rmtree(self.base_dir / "containers" / container.namespace / container.id, ignore_errors=True)


# -- /proc helpers ----------------------------------------------------------------------------


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _cmdline(pid: int) -> list[str]:
    """The words of a process's command line: NUL-separated arguments, or a title set with setproctitle
    (one string; the proxy's forked serving process), split at spaces either way (no argument here has
    one)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").replace("\0", " ").split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a zombie waits for init, not for us)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _is_shim_of(pid: int, address: str) -> bool:
    """A shim of the containerd at ``address``: a containerd-shim-* program (argv[0], or argv[1] or [2]
    when an interpreter runs the script, with ``-S`` for the proxy's launcher) or ``python -m
    shimstats.proxy``, with ``-address <address>``."""
    argv = _cmdline(pid)
    programs = [os.path.basename(arg) for arg in argv[:3]]
    is_shim = any(p.startswith("containerd-shim") for p in programs) or argv[1:3] == ["-m", "shimstats.proxy"]
    if not is_shim:
        return False
    return any(a == "-address" and i + 1 < len(argv) and argv[i + 1] == address for i, a in enumerate(argv))


def _mount_namespace(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def _rmdir_cgroup(path: Path, deadline: float) -> bool:
    """Remove an empty cgroup; True when it is gone. One with tasks or children stays (EBUSY)."""
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            # runc's delete and the kernel's task exit can lag the ctr call a little.
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- command line (hack/containerd-up.sh, hack/containerd-down.sh) -----------------------------


def main(argv: Sequence[str]) -> int:
    """``up DIR``: start an instance under DIR and print its addresses. ``down DIR``: stop it."""
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.containerd_env up|down DIR", file=sys.stderr)
        return 2
    action, base_dir = argv[0], Path(argv[1]).resolve()
    try:
        if action == "up":
            base_dir.mkdir(parents=True, exist_ok=True)
            if (base_dir / _STATE_FILE).exists():
                print(f"{base_dir} already holds an instance; run down first", file=sys.stderr)
                return 1
            instance = Containerd(base_dir)
            try:
                instance.start()
            except BaseException:
                instance.stop(strict=False)
                with contextlib.suppress(OSError):
                    base_dir.rmdir()  # created above; only if empty
                raise
            print(f"CONTAINERD_ADDRESS={instance.address}")
            print(f"CONTAINERD_TTRPC_ADDRESS={instance.ttrpc_address}")
            print(f"CONTAINERD_RUN_DIR={instance.run_dir}")
            print(f"CONTAINERD_PID={instance.pid}")
            print(f"# ctr --address {instance.address} version")
        else:
            if not (base_dir / _STATE_FILE).exists():
                print(f"{base_dir}: no instance recorded there", file=sys.stderr)
                return 1
            Containerd.attach(base_dir).stop()
    except (ContainerdUnavailable, CtrError, LeftoversError) as e:
        print(f"containerd-{action}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
