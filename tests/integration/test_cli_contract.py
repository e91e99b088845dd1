"""The `shimstats` command line's promise: a one-line error naming what is at fault, one exit-code table,
no traceback.

Where the traceback behaviour belongs to the process (Ctrl-C during imports, a closed stdout, what the
interpreter prints at exit) the CLI runs as a real process, the way its console script starts it; the rest
runs in-process through cli.main(argv). Shims and agents are real sockets: our own ttrpc server answering
what the case needs (an undecodable answer), our agent and adapter serving a real capture, or addresses
where nothing listens.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from shimstats import cli
from shimstats.agent_client import AgentClient
from shimstats.commands import _exit
from shimstats.ttrpc import CallContext, Code, TtrpcError
from shimstats.wire import HEALTH_SERVICE, TASK_SERVICE
from tests.integration.harness import (
    CLI,
    REPO,
    AgentProcess,
    ServeProcess,
    SilentAgent,
    fixtures,
    short_tmp,
    ttrpc_server,
)

CONSOLE_SCRIPT = [sys.executable, "-c", "import sys; from shimstats.cli import main; sys.exit(main())"]
"""What pip's `shimstats` console script runs: the import of shimstats.cli happens outside main()."""
V2 = next(fx for fx in fixtures() if fx.name == "v2-6.1.0-56-amd64-container-inactive-file")
V2_DIR = V2.path / "cgroup" / str(V2.meta["container_path"]).lstrip("/")
SAMPLE = [
    "--memory-stat",
    str(V2_DIR / "memory.stat"),
    "--usage",
    V2.file("memory", "memory.current").strip(),
]
GARBAGE = b"\xff\xff\xff"
"""Field 31 with wire type 7, which protobuf does not have: DecodeError for any message."""


def one_clean_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == _exit.CANNOT_CHECK
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "verify", "compare"])
@pytest.mark.parametrize(
    ("shim", "complaint"),
    [
        ("vsock://notanumber:1", "CID must be"),
        ("tcp://127.0.0.1:1", "expected unix:///path"),
        ("hvsock:///x", "the guest port is missing"),
    ],
)
def test_a_malformed_shim_address_is_a_usage_error(
    command: str, shim: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, [command, "--shim", shim, "--id", "c", *SAMPLE])
    assert f"argument --shim: '{shim}': {complaint}" in err


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_shim_address_naming_no_socket_says_so(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shim.sock"
    if kind == "file":
        path.write_text("")
    else:
        path.mkdir()
    assert cli.main(["stats", "--shim", f"unix://{path}", "--id", "c"]) == _exit.CANNOT_CHECK
    err = capsys.readouterr().err
    one_clean_line(err)
    assert f"{path} is not a socket" in err
    assert "refused" not in err
    assert cli.main(["verify", "--shim", str(path), "--id", "c", *SAMPLE]) == _exit.CANNOT_CHECK
    assert f"{path} is not a socket" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["explain", "compare"])
def test_a_cgroup_naming_a_file_says_so(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "memory.stat"
    path.write_text("")
    assert cli.main([command, "--id", "c", "--cgroup", str(path)]) == _exit.CANNOT_CHECK
    err = capsys.readouterr().err
    one_clean_line(err)
    assert f"{path} is not a directory" in err


GRPC_FLAGS = [("compare", "--containerd"), ("compare", "--cri"), ("discover", "--cri")]
"""Flags naming a gRPC socket (containerd's, the CRI's): checked as the ttrpc ones are, before any call."""


def grpc_argv(command: str, flag: str, value: str) -> list[str]:
    base = (
        ["compare", "--id", "c", *SAMPLE] if command == "compare" else ["discover", "--kata-root", "/nowhere"]
    )
    return [*base, flag, value]


@pytest.mark.parametrize(("command", "flag"), GRPC_FLAGS)
@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("tcp://127.0.0.1:1", "expected unix:///path"),
        ("vsock://3:1", "expected unix:///path"),
        ("unix://", "no socket path"),
    ],
)
def test_a_malformed_grpc_address_is_a_usage_error(
    command: str, flag: str, value: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, grpc_argv(command, flag, value))
    assert f"argument {flag}: '{value}': {complaint}" in err


@pytest.mark.parametrize(("command", "flag"), GRPC_FLAGS)
def test_a_grpc_address_naming_no_socket_says_so(
    command: str, flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "containerd.sock"
    path.write_text("")
    for value in (str(path), f"unix://{path}", str(tmp_path)):
        err = usage_error(capsys, grpc_argv(command, flag, value))
        assert "is not a socket" in err, err
        assert "refused" not in err


# --- durations ------------------------------------------------------------------------------------------

TIMEOUT_COMMANDS = {
    "stats": ["stats", "--shim", "unix:///nowhere.sock", "--id", "c"],
    "verify": ["verify", "--shim", "unix:///nowhere.sock", "--id", "c", *SAMPLE],
    "compare": ["compare", "--id", "c", *SAMPLE],
    "explain": ["explain", "--id", "c", *SAMPLE],
    "check-resources": ["check-resources", "--agent", "unix:///nowhere.sock", "--id", "c"],
    "serve": ["serve", "--listen", "unix:///nowhere/a.sock", "--agent", "unix:///nowhere.sock"],
    "exporter": ["exporter", "--listen-http", "127.0.0.1:0", "--agent", "unix:///x.sock", "--id", "c"],
    "discover": ["discover", "--kata-root", "/nowhere"],
}


@pytest.mark.parametrize("command", sorted(TIMEOUT_COMMANDS))
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "0s", "1e9", "25h", "2 s", ""])
def test_a_timeout_that_is_no_duration_is_a_usage_error(
    command: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = usage_error(capsys, [*TIMEOUT_COMMANDS[command], "--timeout", value])
    assert "argument --timeout" in err


@pytest.mark.parametrize("value", ["inf", "-1s", "1e3"])
def test_wait_refuses_the_same_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, [*TIMEOUT_COMMANDS["check-resources"], "--wait", value])
    assert "argument --wait" in err


@pytest.mark.parametrize("command", sorted(TIMEOUT_COMMANDS))
def test_one_duration_syntax_for_every_timeout(command: str) -> None:
    parser = cli.build_parser()
    for text, seconds in (("2", 2.0), ("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5", 1.5)):
        args = parser.parse_args([*TIMEOUT_COMMANDS[command], "--timeout", text])
        assert args.timeout == seconds, (command, text)
    if command == "check-resources":
        args = parser.parse_args([*TIMEOUT_COMMANDS[command], "--wait", "500ms"])
        assert args.wait == 0.5


# --- flags after the subcommand -------------------------------------------------------------------------


def test_log_level_works_after_the_subcommand_and_wins_over_the_one_before() -> None:
    def explain(*flags: str) -> str:
        argv = [*CLI, *flags[:2], "explain", "--id", "c", *SAMPLE, *flags[2:]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stderr

    debug_line = "DEBUG asyncio: Using selector"
    assert debug_line not in explain("--log-level", "warning")
    assert debug_line in explain("--log-level", "debug")
    assert debug_line in explain("--log-level", "error", "--log-level", "debug")
    assert debug_line not in explain("--log-level", "debug", "--log-level", "error")


def test_every_command_that_names_a_container_takes_id() -> None:
    parser = cli.build_parser()
    argv = {
        "stats": ["stats", "--shim", "/x.sock"],
        "verify": ["verify", "--shim", "/x.sock", *SAMPLE],
        "compare": ["compare", *SAMPLE],
        "explain": ["explain", *SAMPLE],
        "check-resources": ["check-resources", "--agent", "/x.sock"],
    }
    for command, flags in argv.items():
        assert parser.parse_args([*flags, "--id", "web-1"]).id == "web-1", command
    exporter = parser.parse_args(
        ["exporter", "--listen-http", "127.0.0.1:1", "--agent", "/x", "--id", "a", "--id", "b"]
    )
    assert exporter.container == ["a", "b"]


# --- undecodable answers --------------------------------------------------------------------------------


async def garbage(payload: bytes, context: CallContext) -> bytes:
    """A handler that answers OK with bytes that decode as no message."""
    return GARBAGE


def garbage_server(directory: Path) -> AbstractAsyncContextManager[str]:
    """A ttrpc server whose Task/Stats and Health/Check answer with GARBAGE."""
    services = {TASK_SERVICE: {"Stats": garbage}, HEALTH_SERVICE: {"Check": garbage}}
    return ttrpc_server(f"unix://{directory}/garbage.sock", services)


async def cli_process(*argv: str) -> tuple[int, str, str]:
    """The CLI as a process while this event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_an_undecodable_stats_answer_is_a_clean_error() -> None:
    async def body() -> None:
        with short_tmp() as tmp:
            async with garbage_server(tmp) as shim:
                stats = await cli_process("stats", "--shim", shim, "--id", "c")
                verify = await cli_process("verify", "--shim", shim, "--id", "c", *SAMPLE)
                compare = await cli_process("compare", "--shim", shim, "--id", "c", *SAMPLE)
        for code, _, err in (stats, verify):
            assert code == _exit.CANNOT_CHECK, err
            one_clean_line(err)
            assert "StatsResponse does not decode" in err
        code, out, err = compare
        assert code == _exit.FOUND_WRONG, err  # a live source failed; the guest's columns are still shown
        assert "Traceback" not in err
        assert "live shim: MetricsDecodeError: the shim's StatsResponse does not decode" in out

    asyncio.run(body())


def test_an_undecodable_health_answer_is_a_status() -> None:
    async def body() -> TtrpcError:
        with short_tmp() as tmp:
            async with garbage_server(tmp) as address:
                agent = AgentClient(address)
                try:
                    with pytest.raises(TtrpcError) as error:
                        await agent.check(5.0)
                finally:
                    await agent.close()
        return error.value

    error = asyncio.run(body())
    assert error.code == Code.INTERNAL
    assert "Health/Check" in error.message
    assert "does not decode" in error.message


# --- a closed stdout ------------------------------------------------------------------------------------


def run_into_closed_pipe(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout a pipe whose reader is already gone: the first write meets EPIPE, as after `| head`
    has read its line and exited, but every time rather than in a race."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, timeout=30, cwd=REPO)
    finally:
        os.close(write_end)


def test_a_closed_stdout_ends_quietly(fixture_serve: str) -> None:
    for argv in (
        ["explain", "--id", "c", *SAMPLE, "--json"],
        ["compare", "--id", "c", *SAMPLE, "--json"],
        ["stats", "--shim", fixture_serve, "--id", V2.request_id, "--json"],
        ["stats", "--shim", fixture_serve, "--id", V2.request_id],
    ):
        done = run_into_closed_pipe([*CONSOLE_SCRIPT, *argv])
        assert done.returncode == _exit.OUTPUT_CLOSED, done.stderr
        assert done.stderr == b"", done.stderr


def test_head_reads_the_first_line(fixture_serve: str) -> None:
    """The real pipeline: `head -1` gets the first line whether or not it closes before we finish."""
    argv = " ".join([*CONSOLE_SCRIPT[:2], repr(CONSOLE_SCRIPT[2]), "stats", "--shim", fixture_serve])
    script = f'{argv} --id {V2.request_id} --json | head -1; echo "${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.stdout == "{\n"
    assert done.stderr.strip() in (str(_exit.OK), str(_exit.OUTPUT_CLOSED)), done.stderr


@pytest.fixture(scope="module")
def fixture_serve() -> Iterator[str]:
    """Our adapter in front of our agent serving the v2 capture: a shim with a real answer."""
    with (
        short_tmp() as tmp,
        AgentProcess(tmp, V2.agent_args()) as agent,
        ServeProcess(tmp, agent.address) as serve,
    ):
        yield serve.address


# --- Ctrl-C ---------------------------------------------------------------------------------------------


def test_shimstats_cli_imports_no_command_before_main() -> None:
    """The console script imports shimstats.cli outside main(): that import must hold nothing slow, so that
    a Ctrl-C during the first few hundred milliseconds falls inside main()'s guard."""
    probe = "import sys, shimstats.cli; print(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd=REPO)
    loaded = set(done.stdout.split())
    assert {m for m in loaded if m.startswith("shimstats")} == {
        "shimstats",
        "shimstats.cli",
        "shimstats.commands",
        "shimstats.commands._exit",
    }
    assert not {m for m in loaded if m.split(".")[0] in ("google", "asyncio", "guest_agent")}


@pytest.mark.parametrize("delay", [0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8])
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(delay: float) -> None:
    """SIGINT at a spread of moments from the start of main() (the console script has just imported
    shimstats.cli, as -X importtime reports) through the commands' imports (~0.4 s) to waiting for input:
    the command reads its memory.stat from a stdin that never ends, so it is alive whenever the signal comes.

    What comes before is not ours to guard, or too short to matter: the interpreter's start-up (a SIGINT
    there kills it, or gives "Fatal Python error: init_import_site" when .pth files make site slow), then
    about a millisecond for the console script's own lines and shimstats.cli's standard-library-only top
    (test_shimstats_cli_imports_no_command_before_main keeps it that short)."""
    argv = [sys.executable, "-X", "importtime", *CONSOLE_SCRIPT[1:]]
    argv += ["explain", "--id", "c", "--memory-stat", "-", "--usage", "1"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )
    assert proc.stderr is not None
    try:
        while not proc.stderr.readline().rstrip().endswith(b"| shimstats.cli"):
            pass
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        # stdin stays open until the process ends: communicate() would close it at once, and an EOF coming
        # with the signal could end the read first (the command would then answer "no memory.stat").
        killer = threading.Timer(30, proc.kill)  # a process that ignored the signal fails, never hangs
        killer.start()
        try:
            err = proc.stderr.read()
            proc.wait()
        finally:
            killer.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
    said = [line for line in err.splitlines() if not line.startswith(b"import time:")]
    assert proc.returncode == _exit.INTERRUPTED, err
    assert said == [b"shimstats: interrupted"], err


def test_ctrl_c_while_a_call_waits_exits_130() -> None:
    """SIGINT once the shim has the request (it never answers): asyncio.run's KeyboardInterrupt, caught."""

    async def body() -> tuple[int, bytes]:
        with short_tmp() as tmp:
            async with SilentAgent(tmp) as shim:
                proc = await asyncio.create_subprocess_exec(
                    *CONSOLE_SCRIPT,
                    "stats",
                    "--shim",
                    shim.address,
                    "--id",
                    "c",
                    "--timeout",
                    "1m",
                    cwd=REPO,
                    stderr=asyncio.subprocess.PIPE,
                )
                while not shim.timeouts:  # noqa: ASYNC110 - the harness records requests in a list
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGINT)
                _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode is not None
        return proc.returncode, err

    code, err = asyncio.run(body())
    assert code == _exit.INTERRUPTED, err
    assert err == b"shimstats: interrupted\n"


def test_ctrl_c_while_discover_waits_for_a_shim_exits_130() -> None:
    """discover asks each sandbox's shim for its agent URL; SIGINT while a shim holds the question open
    ends as every other command's Ctrl-C does (one line, 130), not silently."""

    async def body() -> tuple[int, bytes]:
        asked = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1024)  # GET /agent-url, never answered
            asked.set()
            await reader.read()

        with short_tmp() as tmp:
            sandbox = Path(tmp) / "sbs" / "sandbox-1"
            sandbox.mkdir(parents=True)
            server = await asyncio.start_unix_server(hold, path=str(sandbox / "shim-monitor.sock"))
            argv = ["discover", "--kata-root", str(sandbox.parent), "--cri", f"{tmp}/no-cri.sock"]
            proc = await asyncio.create_subprocess_exec(
                *CONSOLE_SCRIPT, *argv, "--timeout", "1m", cwd=REPO, stderr=asyncio.subprocess.PIPE
            )
            try:
                await asyncio.wait_for(asked.wait(), timeout=60)
                proc.send_signal(signal.SIGINT)
                _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                server.close()
        assert proc.returncode is not None
        return proc.returncode, err

    code, err = asyncio.run(body())
    assert code == _exit.INTERRUPTED, err
    assert err == b"shimstats: interrupted\n"


# --- the table ------------------------------------------------------------------------------------------


def test_the_exit_code_table_is_in_help_and_in_the_readme() -> None:
    done = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert _exit.TABLE in done.stdout
    readme = (REPO / "README.md").read_text()
    for code in (_exit.OK, _exit.FOUND_WRONG, _exit.CANNOT_CHECK, _exit.INTERRUPTED, _exit.OUTPUT_CLOSED):
        assert f"| {code} |" in readme, code


def test_json_outputs_still_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """The guard around main() passes a command's own output and code through untouched."""
    assert cli.main(["explain", "--id", "c", *SAMPLE, "--json"]) == _exit.OK
    assert json.loads(capsys.readouterr().out)["guest"] == "v2"


def test_a_config_that_is_not_text_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the CLI fuzzing (tests/unit/test_fuzz_cli.py): tomllib's UnicodeDecodeError escaped."""
    config = tmp_path / "exporter.toml"
    config.write_bytes(bytes(range(128, 256)))
    assert cli.main(["exporter", "--listen-http", "127.0.0.1:0", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    one_clean_line(err)
    assert f"config {config} is not UTF-8 text" in err
