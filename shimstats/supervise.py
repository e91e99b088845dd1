"""Child processes we start and must stop: spawn, stop in reverse order on success, error, Ctrl-C and
SIGTERM, and what to do when a signal arrives mid-way.

Used by ``shimstats demo`` and ``shimstats guest-test``: everything a run creates is registered with a
Cleanup as soon as it exists and undone in reverse order. Child processes also get SIGTERM from the
kernel should the parent die without cleaning up (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import shimstats
from shimstats.ttrpc.probe import listening

START_TIMEOUT = 15.0
"""Seconds a child process gets to start listening."""
STOP_TIMEOUT = 3.0
"""Seconds a child process gets to exit after SIGTERM, before SIGKILL."""


class StartError(RuntimeError):
    """A child process died or hung before it listened; the message names it, with its log's tail."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop and clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


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
    """The SIGINT/SIGTERM handler while a run goes on: remember the signal, and stop right here."""
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
    """In the child before exec: get SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG), and let through
    the signals signals_held() blocked in the parent (a signal mask survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def child_env() -> dict[str, str]:
    """The parent's environment, with this very shimstats on PYTHONPATH (a source checkout works too)."""
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
    """Start ``argv`` in its own session (Ctrl-C reaches only the parent, which then stops it in order)."""
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


def wait_listening(children: Sequence[Child], timeout: float = START_TIMEOUT) -> None:
    """Block (bounded) until every child's socket accepts; StartError naming one that died or hung."""
    deadline = time.monotonic() + timeout
    waiting = [c for c in children if c.socket is not None]
    while waiting:
        for child in list(waiting):
            assert child.socket is not None
            if child.process.poll() is not None:
                raise StartError(f"{child.name} exited with {child.process.returncode}: {child.log_tail()}")
            if listening(str(child.socket)):
                waiting.remove(child)
        if waiting and time.monotonic() > deadline:
            raise StartError(f"{waiting[0].name} did not listen within {timeout:g}s: {waiting[0].log_tail()}")
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


def run_with_cleanup(
    command: str,
    body: Callable[[Cleanup], int],
    errors: tuple[type[Exception], ...],
    error_exit: int,
    cleanup_exit: int,
) -> int:
    """Run ``body`` with a Cleanup, SIGINT/SIGTERM turned into Interrupted, and undo everything after.

    ``errors`` are printed as one line ``shimstats COMMAND: message`` (exit ``error_exit``); a signal exits
    128 + its number; cleanup problems are printed, and turn a success into ``cleanup_exit``.
    """
    cleanup = Cleanup()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = error_exit
    try:
        code = body(cleanup)
    except errors as exc:
        print(f"shimstats {command}: {exc}", file=sys.stderr)
        code = error_exit
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"shimstats {command}: interrupted, cleaning up", file=sys.stderr)
        code = 128 + signum
    finally:
        cleanup.run()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for problem in cleanup.problems:
        print(f"shimstats {command}: cleanup: {problem}", file=sys.stderr)
    return cleanup_exit if cleanup.problems and code == 0 else code
