"""No command line ends in a traceback: random argv over every subcommand's flags, with hostile values.

Each example picks a subcommand, then flags from that subcommand's own parser (so a flag added later is
fuzzed too), each with a value from a hostile list (malformed addresses, numbers out of range, inf and
nan, paths that are directories, binaries or missing, non-UTF-8 text) or free text where free text cannot
reach anything real. The CLI runs in-process through cli.main(argv), which is fast enough for hundreds of
examples. Everything network-facing points where nothing listens: sockets in a directory that does not
exist, a regular file, a TCP port this test holds without accepting, names that do not resolve, Kata
sandbox directories of the test's own whose shims cannot answer. Flags whose default would reach this
machine's own sandboxes or CRI (discover's) are always given (PINNED). So no example can start a server
that stays up or reach a real agent, shim or containerd.

Asserted for every example: the exit code is 0, 1 or 2 (argparse's own errors included), stderr has no
traceback, and no error reached main()'s last-resort guard ("internal error"), which would mean a case
nobody handled. demo and guest-test run whole machines (cgroups, qemu): they get only flags that stop
them before anything starts (argparse errors, --help, a --kernel that does not exist).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shimstats import cli
from shimstats.commands import _exit

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests/fixtures/cgroupfs/v2-6.1.0-56-amd64-container-inactive-file/cgroup"
BUDGET = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

NOWHERE = "/nonexistent-shimstats-fuzz"
EXAMPLE_LIMIT = 30.0
"""Seconds one example may run: far above what any takes (a failed dial is instant), only a hang hits it."""
HOSTILE = [
    "",
    " ",
    "-",
    "--",
    "0",
    "-1",
    "inf",
    "-inf",
    "nan",
    "1e999",
    "18446744073709551616",
    "9" * 40,
    "0x10",
    "1_000",
    "max",
    "500ms",
    "2s",
    "1m30s",
    "25h",
    "é",
    "\udcff",  # a byte that is not UTF-8, as Python hands it over in sys.argv (surrogateescape)
    "☃☃",
    "%s%n",
    "a=b",
    "=",
    "../../etc/passwd",
    f"{NOWHERE}/x",
    "/",
    "/dev/null",
    "/bin/sh",
]
"""Values for any flag. No NUL: a real argv cannot carry one (execve ends a string at it)."""
CLIENT_ADDRESSES = (
    [f"unix://{NOWHERE}/x.sock", f"{NOWHERE}/x.sock", "unix:///dev/null", "unix:///"],
    [
        "unix://relative.sock",
        "vsock://notanumber:1",
        "vsock://3",
        "vsock://3:99999999999",
        "vsock://-2:1",
        "hvsock:///x",
        f"hvsock://{NOWHERE}/kata.hvsock:1024",
        "tcp://127.0.0.1:1",
        "serial:///dev/nonexistent",
        "http://x",
        "",
    ],
)
"""Where a command dials (well-formed, malformed): never a socket that exists. No well-formed vsock address:
this machine has vsock, and a dial to a CID that does not answer would cost the whole --timeout."""
GRPC_ADDRESSES = (
    [f"unix://{NOWHERE}/cri.sock", f"{NOWHERE}/cri.sock", "none"],
    ["tcp://127.0.0.1:1", "vsock://3:1", "unix://", "relative.sock", "/dev/null", "/", ""],
)
"""Where a command dials gRPC (containerd's CRI): never a socket that exists ("none": exporter's no-CRI)."""
PINNED = {"discover": {"--kata-root": "kata_root", "--cri": None}}
"""Flags whose default reaches this machine's real Kata sandboxes or CRI: when an example does not choose
them, they are added pointing at the test's own sandboxes (a files entry) or NOWHERE (None)."""
LISTEN_ADDRESSES = (
    ["unix:///dev/null/listen.sock"],
    [f"unix://{NOWHERE}/{'x' * 120}.sock", "relative.sock", "tcp://0.0.0.0:1", "vsock://x:1", ""],
)
"""Where serve listens: nothing it could bind. (Not a socket in a missing directory: serve creates the
directory, as containerd does for shim sockets, and would then serve for ever.)"""
DURATIONS = (["0.05", "50ms", "0.1s"], ["0", "inf", "nan", "-1", "1e3", "2 s", "25h", "soon", ""])
"""Short when valid: a dial that fails still costs nothing, a retry loop (--wait) ends fast."""
HOSTILE_ODDS = 5
"""One flag value in this many is hostile; the rest are plausible, so most examples get past argparse
and the hostile value meets the command itself."""
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=12)


@pytest.fixture(scope="module")
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that this test holds: the exporter cannot bind it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        yield held.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Hostile files: a memory.stat of garbage bytes, a TOML config that is wrong in several ways."""
    base = tmp_path_factory.mktemp("fuzz-cli")
    (base / "binary.stat").write_bytes(bytes(range(256)))
    (base / "garbled.stat").write_text("inactive_file 1\nanon -5\nfile\n")
    (base / "bad.toml").write_text('[[agent]]\naddress = "tcp://x"\n[[agent.container]]\nid = 5\n')
    (base / "empty.toml").write_text("")
    paths = [str(base / name) for name in ("binary.stat", "garbled.stat", "bad.toml", "empty.toml")]
    real_stat = str(SAMPLE / "shimstats-fx-inactive-file" / "memory.stat")
    kata_root = base / "sbs"  # sandboxes whose shim cannot answer: no socket, a regular file, a stale socket
    for sandbox in ("no-socket", "file", "stale"):
        (kata_root / sandbox).mkdir(parents=True)
    (kata_root / "file" / "shim-monitor.sock").write_text("")
    with socket.socket(socket.AF_UNIX) as stale:  # bound, then closed: connecting is refused
        stale.bind(str(kata_root / "stale" / "shim-monitor.sock"))
    return {
        "paths": [*paths, real_stat, str(SAMPLE), str(base)],
        "real_stat": [real_stat],
        "kata_root": [str(kata_root), f"{NOWHERE}/sbs"],
    }


PLAUSIBLE = {
    "id": ["web-1", "c"],
    "container": ["web-1"],
    "namespace": ["k8s.io", "default"],
    "usage": ["216236032", "800Mi", "1", "0", "18446744073709551615"],
    "limit": ["1Gi", "max", "1", "0", "18446744073709551615"],
    "tolerance": ["0", "524288"],
    "cpu_request": ["500m", "2"],
    "cpu_limit": ["1", "250m"],
    "memory_request": ["256Mi"],
    "memory_limit": ["512Mi", "1G"],
    "node_memory": ["8Gi"],
    "node_swap": ["1Gi"],
}
"""Values that pass a flag's own check, so that the example gets past argparse to the command itself."""


def value_choices(
    action: argparse.Action, files: dict[str, list[str]], port: int
) -> tuple[st.SearchStrategy[str], st.SearchStrategy[str]]:
    """(plausible, hostile) values for one flag. Where a flag points somewhere, both kinds point nowhere
    real; elsewhere hostile values are the shared list and free text."""
    dest = action.dest
    hostile = st.sampled_from(HOSTILE) | TEXT
    pairs = {
        "shim": CLIENT_ADDRESSES,
        "agent": CLIENT_ADDRESSES,
        "containerd": CLIENT_ADDRESSES,
        "listen": LISTEN_ADDRESSES,
        "listen_http": ([f"127.0.0.1:{port}", "nonexistent.invalid:80"], ["127.0.0.1:99999", ":", "x"]),
        "timeout": DURATIONS,
        "wait": DURATIONS,
        "kernel": ([f"{NOWHERE}/vmlinuz", f"{NOWHERE}.deb"], ["", "debian:"]),
        "fixtures": ([f"{NOWHERE}/fixtures"], ["/dev/null"]),
        "cri": GRPC_ADDRESSES,
        "kata_root": (files["kata_root"], ["/dev/null", "", "relative", "/bin/sh"]),
        "agent_port": (["2048", "1024", "kata-agent"], ["0", "-1", "4294967296", "kata", ""]),
    }
    if dest in pairs:
        plausible, malformed = pairs[dest]
        return st.sampled_from(plausible), st.sampled_from(malformed)
    if dest in ("memory_stat", "config", "cgroup"):
        return st.sampled_from(files["real_stat" if dest == "memory_stat" else "paths"]), hostile
    known = [str(c) for c in action.choices] if action.choices else PLAUSIBLE.get(dest, [])
    return (st.sampled_from(known) if known else hostile), hostile


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = subparsers()
CONTAINED = {"demo", "guest-test", "install-shim"}
"""Commands that would start real machinery, or write a file wherever a drawn path points (install-shim,
given "." or "/"): fuzzed only with flags that stop them first."""


@st.composite
def argvs(draw: st.DrawFn, files: dict[str, list[str]], port: int) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    parser = COMMANDS[command]
    options = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "log_level")]
    argv = [command]
    chosen = draw(st.lists(st.sampled_from(options), max_size=4)) if options else []
    if command not in CONTAINED and draw(st.integers(0, 9)) > 0:
        # Usually get past "is required": every required flag, one flag of every required group.
        groups = [g for g in parser._mutually_exclusive_groups if g.required]
        needed = [a for a in options if a.required]
        needed += [draw(st.sampled_from(g._group_actions)) for g in groups]
        if any(a.dest == "memory_stat" for a in needed):
            needed += [a for a in options if a.dest == "usage"]
        chosen = needed + chosen
    for action in chosen:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        else:
            plausible, hostile = value_choices(action, files, port)
            argv += [flag, draw(hostile if draw(st.integers(0, HOSTILE_ODDS - 1)) == 0 else plausible)]
    for flag, where in PINNED.get(command, {}).items():
        if flag not in argv:
            argv += [flag, draw(st.sampled_from(files[where])) if where else f"{NOWHERE}/pinned.sock"]
    if command in CONTAINED:
        # Something that ends it before it starts: an argparse error, --help, or a missing kernel.
        argv += draw(st.sampled_from([["--no-such-flag"], ["--help"], ["--kernel", f"{NOWHERE}/vmlinuz"]]))
        if command == "demo" and argv[-2:] == ["--kernel", f"{NOWHERE}/vmlinuz"]:
            argv[-2:] = ["--json", "extra"]
    if draw(st.booleans()):
        argv += ["--log-level", draw(st.sampled_from(["debug", "error", "loud", ""]))]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(HOSTILE) | TEXT))
    return argv


class Hung(BaseException):
    """Raised by SIGALRM in an example that did not end: a BaseException, so no guard in the CLI eats it."""


def _hung(signum: int, frame: object) -> None:
    raise Hung


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """cli.main(argv) with stdout and stderr captured and the root logger bare during the call, restored
    afterwards; an example still running after EXAMPLE_LIMIT seconds fails with its argv, not a hang."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in handlers:  # as in a fresh process: not another test's handler on a closed stream
        root.removeHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_LIMIT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: int | str | None = cli.main(argv)
            except SystemExit as exc:  # argparse: usage errors 2, --help and --version 0
                code = exc.code
    except Hung:
        pytest.fail(f"still running after {EXAMPLE_LIMIT}s: {argv}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert isinstance(code, int), (argv, code)
    return code, err.getvalue()


def test_every_command_is_fuzzed() -> None:
    """New subcommands join the fuzzing by themselves; only the machine-starting ones are held back."""
    served = {"stats", "verify", "compare", "explain", "check-resources", "serve", "exporter", "discover"}
    assert served <= set(COMMANDS)
    assert set(COMMANDS) >= CONTAINED


@BUDGET
@given(data=st.data())
def test_no_command_line_ends_in_a_traceback(
    data: st.DataObject, files: dict[str, list[str]], held_port: int
) -> None:
    argv = data.draw(argvs(files, held_port), label="argv")
    code, err = run_in_process(argv)
    assert not os.path.exists(NOWHERE), argv  # nothing created where the fuzzing assumes nothing is
    assert code in (_exit.OK, _exit.FOUND_WRONG, _exit.CANNOT_CHECK), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    assert "internal error" not in err, (argv, err)
