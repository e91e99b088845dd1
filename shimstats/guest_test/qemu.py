"""The guest-test VM: qemu's command line, its disks, the host directories it shares, and the accelerator.

The guest runs the host's own Python: the directories it needs (Python's prefix, the directories holding
shimstats, guest_agent and their dependencies, and /usr for the C libraries) are shared read-only over
virtio-9p and mounted at their host paths, and the host's top-level symlinks (/lib -> usr/lib on merged-/usr
systems) are made again, so every path means the same inside and out. Three virtio-serial ports carry the
control channel and the agent's two connections; their host ends are unix sockets qemu listens on.

KVM is used only where it can run the kernel: some hosts expose /dev/kvm yet qemu aborts on an MSR or the
guest meets emulation failures, so a short probe boot decides, once per host, qemu and kernel (cached).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shimstats.guest_test import protocol
from shimstats.guest_test.image import Kernel, write_atomic

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 1024
CPUS = 2
DATA_DISK_MIB = 512
SWAP_DISK_MIB = 256
PROBE_TIMEOUT = 45.0
"""Seconds a KVM probe boot gets (a working KVM boots in one or two)."""
CMDLINE_MAX = 2047
"""x86 COMMAND_LINE_SIZE - 1."""
PYTHON_PACKAGES = ("shimstats", "guest_agent", "google.protobuf", "google.rpc")
"""What the guest side imports from outside the standard library: their directories are shared."""
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32")
"""Where the C libraries Python loads live; on a merged-/usr host all but /usr are symlinks."""


class QemuError(RuntimeError):
    """qemu is missing or cannot run this guest."""


@dataclass(frozen=True)
class Accel:
    """How qemu runs the guest's CPU."""

    name: str
    args: tuple[str, ...]

    @property
    def description(self) -> str:
        return f"{self.name.upper()} ({' '.join(self.args)} -M pc -m {MEMORY_MIB} -smp {CPUS})"


TCG = Accel("tcg", ("-accel", "tcg,thread=multi", "-cpu", "max"))
KVM = Accel("kvm", ("-accel", "kvm", "-cpu", "host"))


def qemu_version() -> str:
    try:
        out = subprocess.run(
            [QEMU, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except FileNotFoundError:
        raise QemuError(f"{QEMU} not found: apt-get install qemu-system-x86 e2fsprogs") from None
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("QEMU emulator version ").strip() or "unknown"


def host_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.machine()


def package_root(module: str) -> Path | None:
    """The sys.path entry a top-level package (or namespace package part) is imported from."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or []) or ([spec.origin] if spec.origin else [])
    if not locations:
        return None
    path = Path(os.path.realpath(locations[0]))
    for _ in module.split("."):
        path = path.parent
    return path


def _inside(path: Path, others: Sequence[Path]) -> bool:
    return any(path != other and path.is_relative_to(other) for other in others)


@dataclass(frozen=True)
class Shares:
    """Host directories the guest mounts read-only at the same paths, and the symlinks it makes again."""

    directories: tuple[Path, ...]
    links: tuple[tuple[str, str], ...]
    python: str
    pythonpath: tuple[Path, ...]

    @classmethod
    def for_this_python(cls) -> Shares:
        wanted: list[Path] = []
        links: list[tuple[str, str]] = []
        for name in SYSTEM_DIRS:
            if os.path.islink(name):
                links.append((name, os.readlink(name)))
            elif os.path.isdir(name):
                wanted.append(Path(name))
        for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
            wanted.append(Path(os.path.realpath(prefix)))
        # sys.executable as it is, not resolved: a venv's python finds its site-packages by its own path.
        python = sys.executable
        wanted += [Path(os.path.realpath(python)).parent, Path(os.path.dirname(os.path.abspath(python)))]
        roots = [root for root in (package_root(m) for m in PYTHON_PACKAGES) if root is not None]
        wanted.extend(roots)
        for path in wanted:
            if "," in str(path) or " " in str(path):
                raise QemuError(f"{path}: a shared directory's path must not contain a comma or a space")
        unique = sorted(set(wanted))
        directories = tuple(p for p in unique if not _inside(p, unique))
        pythonpath = tuple(dict.fromkeys(roots))
        return cls(directories, tuple(links), python, pythonpath)

    def cmdline(self) -> str:
        return " ".join(
            (
                "shimstats.shares=" + ",".join(str(p) for p in self.directories),
                "shimstats.links=" + ",".join(f"{a}:{b}" for a, b in self.links),
                f"shimstats.python={self.python}",
                "shimstats.pythonpath=" + ",".join(str(p) for p in self.pythonpath),
            )
        )

    def qemu_args(self) -> list[str]:
        args: list[str] = []
        for n, path in enumerate(self.directories):
            args += [
                "-fsdev",
                f"local,id=fs{n},path={path},security_model=none,readonly=on,multidevs=remap",
                "-device",
                f"virtio-9p-pci,fsdev=fs{n},mount_tag=s{n}",
            ]
        return args


@dataclass(frozen=True)
class Sockets:
    """The host ends of the guest's serial ports: unix sockets qemu listens on."""

    control: Path
    agents: tuple[Path, ...]

    @classmethod
    def under(cls, directory: Path) -> Sockets:
        return cls(directory / "control.sock", tuple(directory / f"agent{n}.sock" for n in (0, 1)))

    def qemu_args(self) -> list[str]:
        args = ["-device", "virtio-serial-pci"]
        ports = [(self.control, protocol.CONTROL_PORT), *zip(self.agents, protocol.AGENT_PORTS)]
        for n, (path, name) in enumerate(ports):
            args += [
                "-chardev",
                f"socket,id=port{n},path={path},server=on,wait=off",
                "-device",
                f"virtserialport,chardev=port{n},name={name}",
            ]
        return args


def make_disks(directory: Path) -> tuple[Path, Path]:
    """A fresh ext4 data disk and an empty swap disk (the guest runs mkswap), both sparse files."""
    data, swap = directory / "data.img", directory / "swap.img"
    for path, size in ((data, DATA_DISK_MIB), (swap, SWAP_DISK_MIB)):
        with open(path, "wb") as f:
            f.truncate(size << 20)
    try:
        # Inode tables and journal initialised now: no background ext4lazyinit writes muddle the io figures.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(data)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
    except FileNotFoundError:
        raise QemuError("mkfs.ext4 not found: apt-get install e2fsprogs") from None
    except subprocess.CalledProcessError as exc:
        raise QemuError(f"mkfs.ext4 {data} failed: {exc.stderr.strip()}") from exc
    return data, swap


def command(
    kernel: Kernel,
    accel: Accel,
    console: Path,
    *,
    shares: Shares | None = None,
    sockets: Sockets | None = None,
    disks: Sequence[Path] = (),
    probe: bool = False,
) -> list[str]:
    """The qemu command line for a guest-test boot (``probe``: stop once the modules are loaded)."""
    append = "console=ttyS0 panic=-1 loglevel=4"
    if shares is not None:
        append += " " + shares.cmdline()
    if probe:
        append += " shimstats.probe=1"
    if len(append) > CMDLINE_MAX:
        raise QemuError(f"the kernel command line would be {len(append)} bytes, over {CMDLINE_MAX}")
    argv = [QEMU, *accel.args, "-M", "pc", "-m", str(MEMORY_MIB), "-smp", str(CPUS)]
    argv += ["-nodefaults", "-display", "none", "-no-reboot"]
    argv += ["-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initrd), "-append", append]
    argv += ["-serial", f"file:{console}"]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    if sockets is not None:
        argv += sockets.qemu_args()
    if shares is not None:
        argv += shares.qemu_args()
    return argv


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def choose_accel(kernel: Kernel, requested: str, cache: Path) -> tuple[Accel, str]:
    """The accelerator to use and why. ``auto``: KVM if a probe boot of this kernel works (remembered in
    the cache per host kernel, qemu and guest kernel), else TCG."""
    if requested == "tcg":
        return TCG, "TCG as asked"
    if not kvm_usable():
        if requested == "kvm":
            raise QemuError("--accel kvm: /dev/kvm is missing or not usable by this user")
        return TCG, "TCG: /dev/kvm is missing or not usable"
    if requested == "kvm":
        return KVM, "KVM as asked"
    key = f"{qemu_version()}|{platform.release()}|{host_cpu()}|{kernel.release}|{kernel.source}"
    store = cache / "kvm-probe.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = _probe(kernel)
        write_atomic(store, json.dumps(known, indent=2).encode())
    works, detail = known[key]
    if works:
        return KVM, "KVM: a probe boot of this kernel worked"
    return TCG, f"TCG: /dev/kvm exists but cannot run this kernel ({detail}; result cached in {store})"


def _probe(kernel: Kernel) -> tuple[bool, str]:
    # The probe's console is private to this probe: another run probing at the same time has its own.
    with tempfile.TemporaryDirectory(prefix="ssgt-probe-") as private:
        console = Path(private) / "kvm-probe.log"
        argv = command(kernel, KVM, console, probe=True)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return False, f"the probe boot did not finish within {PROBE_TIMEOUT:g} s"
        text = console.read_text(errors="replace") if console.exists() else ""
    if "SHIMSTATS-PROBE-OK" in text:
        return True, "ok"
    last = (done.stderr.strip().splitlines() or [f"qemu exited with {done.returncode}"])[0]
    return False, last[:200]
