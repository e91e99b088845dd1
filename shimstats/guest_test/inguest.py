"""The guest side of guest-test: set the guest up, start our agent, run the phases, capture each one.

Run by ``guest/init.sh`` as ``python -m shimstats.guest_test.inguest`` with the host's own Python (shared
read-only over 9p), so the agent that answers is this very checkout's. It talks to the host over the
control port (``protocol``): hello → config → ready, then per phase: do the phase's step, freeze the
cgroup, capture it (hack/capture-cgroup.sh, shipped as guest/capture-cgroup.sh), send the capture, wait
while the host asks our adapter for Stats, capture again, send, thaw. The freeze holds the workload still,
so the two captures and the agent's answer in between describe the same instant.

Devices (made by shimstats.guest_test.qemu): /dev/vda the ext4 data disk, /dev/vdb the swap disk, and the
virtio-serial ports named in ``protocol``.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from shimstats.guest_test import phases, protocol

PORTS = Path("/sys/class/virtio-ports")
CG = Path("/sys/fs/cgroup")
DATA_DEVICE, SWAP_DEVICE = "/dev/vda", "/dev/vdb"
DATA_DIR, SHM_DIR = Path("/mnt/data"), Path("/dev/shm")
CAPTURES = Path("/tmp/captures")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
WAIT = 300.0
"""Seconds any one step may take under emulation before the guest side gives up (and says so)."""


class GuestError(RuntimeError):
    """A step in the guest failed; the message goes to the host as an ``error``."""


def uptime() -> float:
    return float(Path("/proc/uptime").read_text(encoding="ascii").split()[0])


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GuestError(f"{' '.join(argv)} failed with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_until(what: str, test: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise GuestError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def port_device(name: str) -> str:
    """/dev/vportNpM of the virtio-serial port called ``name``."""
    for port in sorted(PORTS.glob("vport*")):
        if (port / "name").read_text(encoding="ascii").strip() == name:
            return f"/dev/{port.name}"
    raise GuestError(f"no virtio-serial port named {name}")


class Control:
    """The guest end of the control channel; blocking I/O (the host end is a unix socket in qemu)."""

    def __init__(self, device: str) -> None:
        self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        self.pending = b""

    def send(self, message: protocol.Message) -> None:
        data = memoryview(protocol.encode(message))
        while data:
            data = data[os.write(self.fd, data) :]

    def receive(self, expect: str) -> protocol.Message:
        while b"\n" not in self.pending:
            chunk = os.read(self.fd, 65536)
            if not chunk:  # the host closed its end: it gave up on us
                raise GuestError("the host closed the control channel")
            self.pending += chunk
            if len(self.pending) > protocol.MAX_LINE:
                raise GuestError("the host sent an over-long line")
        line, _, self.pending = self.pending.partition(b"\n")
        message = protocol.decode(line)
        if message["type"] != expect:
            raise GuestError(f"expected {expect!r} from the host, got {message['type']!r}")
        return message


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="ascii")


class Cgroups:
    """The cgroup hierarchy of one mode, mounted and used the way a container runtime would."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.dirs: list[Path] = []

    def mount(self) -> None:
        if self.mode == "v2":
            sh("mount", "-t", "cgroup2", "cgroup2", str(CG))
            available = (CG / "cgroup.controllers").read_text(encoding="ascii").split()
            for controller in ("memory", "cpu", "io", "pids"):
                if controller in available:
                    _write(CG / "cgroup.subtree_control", f"+{controller}")
            self.dirs = [CG]
            return
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "cgroup", str(CG))
        for controller in ("memory", "cpu,cpuacct", "pids", "blkio", "freezer"):
            (CG / controller).mkdir()
            sh("mount", "-t", "cgroup", "-o", controller, "cgroup", str(CG / controller))
            self.dirs.append(CG / controller)
        os.symlink("cpu,cpuacct", CG / "cpu")
        os.symlink("cpu,cpuacct", CG / "cpuacct")

    def paths(self, cgroup: str) -> list[Path]:
        return [d / cgroup.lstrip("/") for d in self.dirs]

    def memory(self, cgroup: str) -> Path:
        return CG / cgroup.lstrip("/") if self.mode == "v2" else CG / "memory" / cgroup.lstrip("/")

    def create(self, cgroup: str) -> None:
        for path in self.paths(cgroup):
            path.mkdir()

    def enter(self, cgroup: str) -> Callable[[], None]:
        """A preexec_fn: the child moves itself into the cgroup before it runs anything."""
        files = [str(p / "cgroup.procs") for p in self.paths(cgroup)]

        def move() -> None:
            for name in files:
                with open(name, "w", encoding="ascii") as f:
                    f.write("0")

        return move

    def pids(self, cgroup: str) -> list[int]:
        text = (self.paths(cgroup)[0] / "cgroup.procs").read_text(encoding="ascii")
        return [int(p) for p in text.split()]

    def limit(self, cgroup: str, limit: int, swap: bool) -> None:
        """Set the memory limit; ``swap`` False forbids swapping (v2 swap.max 0, v1 memsw = limit)."""
        d = self.memory(cgroup)
        if self.mode == "v2":
            _write(d / "memory.max", str(limit))
            if not swap:
                _write(d / "memory.swap.max", "0")
            return
        _write(d / "memory.limit_in_bytes", str(limit))
        if not swap:
            _write(d / "memory.memsw.limit_in_bytes", str(limit))

    def freeze(self, cgroup: str, frozen: bool) -> None:
        if self.mode == "v2":
            d = CG / cgroup.lstrip("/")
            _write(d / "cgroup.freeze", "1" if frozen else "0")
            want = f"frozen {int(frozen)}"
            wait_until(f"{cgroup} {want}", lambda: want in (d / "cgroup.events").read_text(encoding="ascii"))
            return
        state = CG / "freezer" / cgroup.lstrip("/") / "freezer.state"
        word = "FROZEN" if frozen else "THAWED"
        _write(state, word)
        wait_until(f"{cgroup} {word}", lambda: state.read_text(encoding="ascii").strip() == word)


class Worker:
    """The container's workload process (shimstats.guest_test.worker), driven one step at a time."""

    def __init__(self, cgroups: Cgroups) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shimstats.guest_test.worker", str(DATA_DIR), str(SHM_DIR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=cgroups.enter(phases.MAIN[1]),
        )
        self.answer()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT)
        line = self.process.stdout.readline().decode(errors="replace").strip() if ready else ""
        status, _, text = line.partition(" ")
        if status != "ok":
            raise GuestError(f"the worker answered {line!r} (exit status {self.process.poll()})")
        result: dict[str, Any] = protocol.decode(b'{"type":"ok","result":' + text.encode() + b"}")["result"]
        return result

    def step(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(name.encode() + b"\n")
        self.process.stdin.flush()
        return self.answer()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(WAIT)


class Guest:
    """Everything the phases need: the control channel, the cgroups, the agent and the worker."""

    def __init__(self, control: Control, config: protocol.Message) -> None:
        self.control = control
        self.mode: str = config["mode"]
        self.machine: str = config["machine"]
        self.cgroups = Cgroups(self.mode)
        self.worker: Worker | None = None
        self.children: list[subprocess.Popen[bytes]] = []
        self.release = os.uname().release

    def prepare(self) -> dict[str, Any]:
        """Disks, tmpfs, THP and cgroups; returns what the host's report should know about them."""
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "ext4", DATA_DEVICE, str(DATA_DIR))
        sh("mkswap", SWAP_DEVICE)
        sh("swapon", SWAP_DEVICE)
        SHM_DIR.mkdir(exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "mode=1777", "shm", str(SHM_DIR))
        if THP.exists():
            _write(THP, "madvise")
        self.cgroups.mount()
        for _, path in (phases.MAIN, phases.OOM):
            self.cgroups.create(path)
        swaps = [line.split() for line in Path("/proc/swaps").read_text(encoding="ascii").splitlines()[1:]]
        return {
            "thp": THP.read_text(encoding="ascii").strip() if THP.exists() else "not built in",
            "swap": [f"{fields[0]} {int(fields[2]) >> 10} MiB" for fields in swaps if len(fields) >= 3],
            "memory": Path("/proc/meminfo").read_text(encoding="ascii").splitlines()[0].split(None, 1)[1],
        }

    def start_agent(self) -> int:
        """Our agent on both agent ports; returns its pid once it listens on both."""
        log = Path("/tmp/agent.log")
        argv = [sys.executable, "-m", "guest_agent", "--log-format", "json", "--log-level", "info"]
        for name in protocol.AGENT_PORTS:
            argv += ["--listen", f"serial://{port_device(name)}"]
        for container_id, path in (phases.MAIN, phases.OOM):
            argv += ["--container", f"{container_id}={path}"]
        with open(log, "wb") as out:
            agent = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.children.append(agent)

        def listening() -> bool:
            if agent.poll() is not None:
                raise GuestError(f"the agent exited with {agent.returncode}: {log.read_text()[-2000:]}")
            return log.read_text(errors="replace").count('"listening"') >= len(protocol.AGENT_PORTS)

        wait_until("the agent listening on its ports", listening)
        return agent.pid

    # -- the phases' steps: each returns notes for the report ---------------------------------------------

    def step(self, phase: phases.Phase) -> dict[str, Any]:
        if phase.name == "empty":
            return {}
        if phase.name == "oom":
            return self.oom()
        if phase.name == "after-kill":
            return self.kill_worker()
        if self.worker is None:
            self.worker = Worker(self.cgroups)
        if phase.name == "pressure":
            self.cgroups.limit(phases.MAIN[1], phases.LIMIT_MIB * phases.MIB, swap=True)
        return self.worker.step(phase.name)

    def oom(self) -> dict[str, Any]:
        path = phases.OOM[1]
        self.cgroups.limit(path, phases.OOM_LIMIT_MIB * phases.MIB, swap=False)
        sleeper = subprocess.Popen(["sleep", "3600"], preexec_fn=self.cgroups.enter(path))
        self.children.append(sleeper)
        hog = subprocess.Popen(
            ["dd", "if=/dev/zero", "of=/dev/null", f"bs={phases.OOM_HOG_MIB}M", "count=1"],
            stderr=subprocess.DEVNULL,
            preexec_fn=self.cgroups.enter(path),
        )
        status = hog.wait(WAIT)
        if status != -signal.SIGKILL:
            raise GuestError(f"the {phases.OOM_HOG_MIB} MiB dd was not OOM-killed (exit status {status})")
        wait_until(f"{path} left with its sleeper", lambda: self.cgroups.pids(path) == [sleeper.pid])
        return {"killed": f"dd (pid {hog.pid}), SIGKILL"}

    def kill_worker(self) -> dict[str, Any]:
        if self.worker is None:
            return {}
        pid = self.worker.process.pid
        self.worker.kill()
        self.worker = None
        wait_until("the container empty", lambda: not self.cgroups.pids(phases.MAIN[1]))
        return {"killed": f"worker (pid {pid}), SIGKILL"}

    # -- one phase, end to end ----------------------------------------------------------------------------

    def capture(self, phase: phases.Phase, when: str) -> Path:
        out = CAPTURES / f"{phase.name}-{when}"
        script = resources.files("shimstats.guest_test").joinpath("guest/capture-cgroup.sh")
        name = f"{self.release}-{self.mode}-{phase.name}"
        note = (
            f"Captured inside the guest by `shimstats guest-test --cgroup {self.mode}`, phase {phase.name} "
            f"({phase.title}), with the cgroup frozen; the host asked our adapter for Stats between this "
            "capture and a second one. Data disk: ext4 on virtio-blk; swap: a virtio-blk disk; 1 GiB RAM."
        )
        env = dict(os.environ, OUT_DIR=str(out))
        argv = ["sh", str(script), phase.cgroup_path, name, "--id", phase.container_id]
        argv += ["--workload", phase.workload, "--machine", self.machine, "--note", note]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise GuestError(f"capture-cgroup.sh failed: {done.stderr.strip()}")
        return out

    def run_phase(self, phase: phases.Phase) -> None:
        started = uptime()
        notes = self.step(phase)
        self.cgroups.freeze(phase.cgroup_path, True)
        before = self.capture(phase, "before")
        self.control.send(
            {
                "type": "phase",
                "phase": phase.name,
                "id": phase.container_id,
                "path": phase.cgroup_path,
                "notes": notes,
                "step_seconds": round(uptime() - started, 2),
                "capture": protocol.pack(before),
            }
        )
        self.control.receive("continue")
        after = self.capture(phase, "after")
        self.control.send({"type": "after", "phase": phase.name, "capture": protocol.pack(after)})
        self.cgroups.freeze(phase.cgroup_path, False)
        shutil.rmtree(before)
        shutil.rmtree(after)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.kill()
        for child in self.children:
            child.kill()
            child.wait(WAIT)


def run(control: Control) -> None:
    control.send({"type": "hello", "kernel": os.uname().release, "uptime": uptime()})
    config = control.receive("config")
    guest = Guest(control, config)
    try:
        facts = guest.prepare()
        facts["agent_pid"] = guest.start_agent()
        control.send({"type": "ready", "uptime": uptime(), "facts": facts})
        selected: Sequence[str] = config["phases"]
        for phase in phases.PHASES:
            if phase.name in selected:
                guest.run_phase(phase)
        control.send({"type": "done", "uptime": uptime()})
    finally:
        guest.stop()
        os.sync()


def main() -> int:
    control = Control(port_device(protocol.CONTROL_PORT))
    try:
        run(control)
    except Exception as exc:
        text = str(exc) if isinstance(exc, GuestError) else traceback.format_exc()
        print(f"guest-test (guest side): {text}", file=sys.stderr, flush=True)
        control.send({"type": "error", "message": text})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
