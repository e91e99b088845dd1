"""One guest-test boot for one cgroup mode: the VM, our agent in it, our adapters on the host, every phase.

The host side of the control channel (``protocol``): boot the VM, send the guest its configuration, wait
until our agent listens on both of its serial ports, check it answers (and hang up, so that the adapter's
own dial is a reconnection the agent must take), start one adapter per Metrics format in front of it, and
for each phase the guest announces: ask both adapters for Stats as containerd does while the cgroup is
frozen, let the guest go on, and judge (``evaluate``). Every process and file it makes is registered with
the caller's Cleanup as soon as it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shimstats import cri, demo
from shimstats.agent_client import AgentClient
from shimstats.fake_containerd import DEFAULT_NAMESPACE, StatsResult, call_stats
from shimstats.guest_test import protocol, qemu
from shimstats.guest_test.evaluate import LIVE, PhaseResult, evaluate
from shimstats.guest_test.image import Kernel, write_atomic
from shimstats.guest_test.phases import BY_NAME
from shimstats.ttrpc import Client, TtrpcError

BOOT_TIMEOUT = 240.0
"""Seconds from qemu's start to the guest side's hello (TCG boot and the first Python start over 9p)."""
STEP_TIMEOUT = 360.0
"""Seconds for any one guest step: getting ready, one phase's workload, one capture."""
STATS_TIMEOUT = 60.0
"""Deadline of each Stats call (the agent answers in the emulated guest, over a serial port)."""
EXIT_TIMEOUT = 60.0

Log = Callable[[str], None]


class GuestTestError(RuntimeError):
    """The run could not go on; the message says where, with the guest console's last lines if it helps."""


@dataclass
class ModeRun:
    """What one boot found."""

    mode: str
    kernel: Kernel
    accel: str
    machine: str
    phases_wanted: tuple[str, ...]
    console: Path
    phases: list[PhaseResult] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    kept: Path | None = None
    """The work directory, when --keep leaves it behind."""

    @property
    def ok(self) -> bool:
        done = [p.phase.name for p in self.phases]
        return not self.error and done == list(self.phases_wanted) and all(p.ok for p in self.phases)


def console_tail(console: Path, lines: int = 25) -> str:
    try:
        text = console.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.strip().splitlines()[-lines:])


class HostControl:
    """The host end of the control channel, on qemu's unix socket for the port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, vm: demo.Child) -> None:
        self.reader, self.writer, self.vm = reader, writer, vm

    @classmethod
    async def connect(cls, path: Path, vm: demo.Child, timeout: float = 30.0) -> HostControl:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=protocol.MAX_LINE)
                return cls(reader, writer, vm)
            except OSError:
                if vm.process.poll() is not None:
                    raise GuestTestError(
                        f"qemu exited with {vm.process.returncode}: {vm.log_tail()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise GuestTestError(
                        f"qemu made no control socket at {path} within {timeout:g} s"
                    ) from None
                await asyncio.sleep(0.05)

    async def send(self, message: protocol.Message) -> None:
        self.writer.write(protocol.encode(message))
        await self.writer.drain()

    async def receive(self, expect: Sequence[str], timeout: float, console: Path) -> protocol.Message:
        """The next message, which must be one of ``expect``; the guest's ``error`` becomes GuestTestError."""
        try:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
        except asyncio.TimeoutError:
            waited = "/".join(expect)
            raise GuestTestError(
                f"the guest sent no {waited} within {timeout:g} s; console:\n{console_tail(console)}"
            ) from None
        if not line:
            raise GuestTestError(
                f"the guest went away while the host waited for {'/'.join(expect)}; "
                f"console:\n{console_tail(console)}"
            )
        message = protocol.decode(line)
        if message["type"] == "error":
            raise GuestTestError(f"the guest side failed: {message.get('message')}")
        if message["type"] not in expect:
            raise GuestTestError(f"expected {'/'.join(expect)} from the guest, got {message['type']!r}")
        return message

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass(frozen=True)
class Settings:
    """What every boot of one guest-test invocation shares."""

    kernel: Kernel
    accel: qemu.Accel
    accel_reason: str
    cache: Path
    fixtures: Path | None
    phases: tuple[str, ...]
    log: Log
    keep: bool = False
    """Leave the work directory (disks, captures, logs) behind instead of removing it."""

    @property
    def machine(self) -> str:
        """Provenance for fixtures, in the words hack/qemu-capture uses."""
        return (
            f"{qemu.QEMU} {qemu.qemu_version()}, {self.accel.description}, host CPU {qemu.host_cpu()}; "
            f"kernel {self.kernel.source}"
        )


def save_fixture(capture: Path, fixtures: Path) -> str:
    """Copy a capture into ``fixtures`` under the name its meta.json carries, replacing an older one.

    Safe against another run saving the same name at the same moment: each copy is staged under a name of
    its own and swapped in by rename; the last one in wins whole, and no staging directory is left behind.
    """
    name = json.loads((capture / "meta.json").read_text(encoding="utf-8")).get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise GuestTestError(f"the capture names itself {name!r}: not a fixture name")
    target = fixtures / name
    fixtures.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.new.", dir=fixtures))
    try:
        shutil.copytree(capture, staging, dirs_exist_ok=True, symlinks=True)
        while True:
            try:
                staging.rename(target)
                return str(target)
            except OSError as exc:  # an older copy is in the way (perhaps only for a moment)
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            aside = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=fixtures))
            with contextlib.suppress(FileNotFoundError):  # another run may have moved it first
                target.rename(aside / name)
            shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise GuestTestError(f"cannot save the fixture {target}: {exc}") from exc


def publish_console(console: Path, cache: Path, mode: str) -> Path | None:
    """Copy a run's private console log to ``cache/console-MODE.log`` (the last finished run's, for
    people to read) in one rename; None when there is no console or the cache cannot take it."""
    published = cache / f"console-{mode}.log"
    try:
        write_atomic(published, console.read_bytes())
    except OSError:
        return None
    return published


async def _ask(clients: dict[str, Client], container_id: str) -> dict[str, StatsResult | str]:
    """Both adapters' Stats for one id, as containerd calls it; a failure is kept as its text."""
    answers: dict[str, StatsResult | str] = {}
    for key, client in clients.items():
        try:
            answers[key] = await call_stats(
                client, container_id, namespace=DEFAULT_NAMESPACE, timeout=STATS_TIMEOUT
            )
        except (TtrpcError, OSError, EOFError, cri.MetricsDecodeError) as exc:
            answers[key] = f"{type(exc).__name__}: {exc}"
    return answers


class Session:
    """One boot: run it with ``run()``; the result is in ``self.result`` even when it fails half way."""

    def __init__(self, settings: Settings, mode: str, cleanup: demo.Cleanup) -> None:
        self.settings = settings
        self.cleanup = cleanup
        self.workdir = self._workdir(settings.keep)
        """Private to this boot: every file it writes (disks, sockets, console, captures, logs) is in here,
        so runs at the same time on one machine never share a path."""
        self.result = ModeRun(
            mode=mode,
            kernel=settings.kernel,
            accel=f"{settings.accel.description}: {settings.accel_reason}",
            machine=settings.machine,
            phases_wanted=settings.phases,
            console=self.workdir / f"console-{mode}.log",
            kept=self.workdir if settings.keep else None,
        )

    async def run(self) -> ModeRun:
        started = time.monotonic()
        try:
            await self._run()
        except GuestTestError as exc:
            self.result.error = str(exc)
        finally:
            self.result.seconds = round(time.monotonic() - started, 1)
            published = publish_console(self.result.console, self.settings.cache, self.result.mode)
            if published is not None and not self.settings.keep:
                self.result.console = published  # the private one goes with the work directory
        return self.result

    def _workdir(self, keep: bool) -> Path:
        # Short and under /tmp: unix socket paths must stay under 108 bytes.
        with demo.signals_held():
            workdir = Path(tempfile.mkdtemp(prefix=f"ssgt-{os.getpid()}-", dir="/tmp"))
            if not keep:
                self.cleanup.push(f"remove {workdir}", functools.partial(shutil.rmtree, workdir))
        return workdir

    def qemu_argv(self, disks: Sequence[Path]) -> list[str]:
        """This boot's qemu command line: every file qemu writes (console, sockets, disks) is in workdir."""
        return qemu.command(
            self.settings.kernel,
            self.settings.accel,
            self.result.console,
            shares=qemu.Shares.for_this_python(),
            sockets=qemu.Sockets.under(self.workdir),
            disks=disks,
        )

    async def _run(self) -> None:
        s, r, log = self.settings, self.result, self.settings.log
        workdir = self.workdir
        try:
            sockets = qemu.Sockets.under(workdir)
            argv = self.qemu_argv(qemu.make_disks(workdir))
        except qemu.QemuError as exc:
            raise GuestTestError(str(exc)) from exc
        log(f"[{r.mode}] booting {s.kernel.release} ({s.accel.name}); console: {r.console}")
        vm = demo.spawn(f"qemu-{r.mode}", argv, workdir, self.cleanup)
        control = await HostControl.connect(sockets.control, vm)
        try:
            await self._converse(control, vm, sockets, workdir)
        finally:
            await control.close()

    async def _converse(
        self, control: HostControl, vm: demo.Child, sockets: qemu.Sockets, workdir: Path
    ) -> None:
        s, r, log = self.settings, self.result, self.settings.log
        hello = await control.receive(("hello",), BOOT_TIMEOUT, r.console)
        log(f"[{r.mode}] guest {hello['kernel']} up at {hello['uptime']:.1f} s; starting our agent in it")
        await control.send({"type": "config", "mode": r.mode, "machine": r.machine, "phases": list(s.phases)})
        ready = await control.receive(("ready",), STEP_TIMEOUT, r.console)
        r.facts = dict(ready["facts"], agent_ready_uptime=ready["uptime"])
        await self._agent_answers(sockets.agents[0])
        clients = await self._adapters(sockets, workdir)
        try:
            while True:
                message = await control.receive(("phase", "done"), STEP_TIMEOUT, r.console)
                if message["type"] == "done":
                    break
                r.phases.append(await self._phase(control, clients, message, workdir))
        finally:
            for client in clients.values():
                await client.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(vm.process.wait), EXIT_TIMEOUT)
        except asyncio.TimeoutError:
            raise GuestTestError(f"the guest did not power off within {EXIT_TIMEOUT:g} s") from None
        # init prints its verdict once, then powers off; kernel lines may follow it (more under load).
        if "SHIMSTATS-GUEST-OK" not in console_tail(r.console, 200):
            raise GuestTestError(f"the guest did not end cleanly; console:\n{console_tail(r.console)}")

    async def _agent_answers(self, address: Path) -> None:
        """Health/Check over the first agent port, then hang up: the adapter's dial is then a reconnection."""
        client = AgentClient(f"unix://{address}", connect_timeout=10.0, default_timeout=STATS_TIMEOUT)
        try:
            if not await client.check(STATS_TIMEOUT):
                raise GuestTestError("our agent in the guest answers Health/Check with NOT_SERVING")
        except TtrpcError as exc:
            raise GuestTestError(f"our agent in the guest does not answer Health/Check: {exc}") from exc
        finally:
            await client.close()

    async def _adapters(self, sockets: qemu.Sockets, workdir: Path) -> dict[str, Client]:
        adapters: list[demo.Child] = []
        for (_, _, fmt), agent in zip(LIVE, sockets.agents):
            sock = workdir / f"{fmt}.sock"
            child = demo.spawn(f"adapter-{fmt}", demo.adapter_argv(sock, agent, fmt), workdir, self.cleanup)
            child.socket = sock
            adapters.append(child)
        try:
            await asyncio.to_thread(demo.wait_listening, adapters)
        except demo.DemoError as exc:
            raise GuestTestError(f"an adapter did not start: {exc}") from exc
        clients: dict[str, Client] = {}
        for (key, _, _), child in zip(LIVE, adapters):
            clients[key] = await Client.connect(f"unix://{child.socket}", timeout=10.0)
        return clients

    async def _phase(
        self, control: HostControl, clients: dict[str, Client], message: protocol.Message, workdir: Path
    ) -> PhaseResult:
        s, r = self.settings, self.result
        phase = BY_NAME[message["phase"]]
        before, after = workdir / f"{phase.name}-before", workdir / f"{phase.name}-after"
        protocol.unpack(message["capture"], before)
        answers = await _ask(clients, message["id"])
        await control.send({"type": "continue"})
        protocol.unpack((await control.receive(("after",), STEP_TIMEOUT, r.console))["capture"], after)
        result = await evaluate(phase, before, after, answers)
        result = dataclasses.replace(
            result,
            notes=message.get("notes", {}),
            step_seconds=float(message.get("step_seconds", 0.0)),
            fixture=save_fixture(before, s.fixtures) if s.fixtures is not None else "",
        )
        s.log(f"[{r.mode}] phase {phase.name}: {'agrees' if result.ok else 'DOES NOT AGREE'}")
        return result


def check_tools() -> None:
    """The host tools a run needs, or GuestTestError naming the packages to install."""
    missing = [tool for tool in (qemu.QEMU, "mkfs.ext4", "dpkg-deb", "apt-get") if shutil.which(tool) is None]
    if missing:
        raise GuestTestError(
            f"missing {', '.join(missing)}: apt-get install qemu-system-x86 e2fsprogs (a Debian-based host)"
        )
