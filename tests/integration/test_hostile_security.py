"""Security properties, checked on the real listeners and the real code (SECURITY.md says why each holds).

- Unix sockets are created 0600 and owned by us; a server refuses a socket path someone else owns and a
  directory someone else could swap the socket in (another user's, or writable by others without sticky).
- A vsock agent listens on the port it was given and on nothing else.
- The guest agent is read-only: after every method has been called with hostile ids, the cgroup tree is
  unchanged, every file the agent holds open is open read-only, and it has started no process.
- No id escapes the cgroup root: ``..``, absolute paths, NUL, very long ids and symlinks planted in the tree
  get INVALID_ARGUMENT or NOT_FOUND, and the bait the symlinks point at is never opened.
- No shell, no eval/exec, no pickle anywhere in shimstats or guest_agent (read from their syntax trees).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shimstats._proto.kata import agent_pb2, health_pb2
from shimstats._proto.shimstats.agent.v1 import resources_pb2
from shimstats.fake_containerd import stats_metadata
from shimstats.ttrpc import Client, Code, Server, TransportError, TtrpcError
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import REPO, AgentProcess, short_tmp
from tests.integration.hostile_rig import FIXTURE, stack, stats_request

NOBODY = 65534
BAIT_USAGE = 777_777_777
HOSTILE_IDS = [
    "..", "../bait", "../../etc", "/etc", "/", ".", "a/../..", "%2e%2e", "evil/..", "a\0b", "\0",
    "x" * 129, "y" * 100_000, "é", "tab\tid", " ", "evil", "evil2", "inside-link",
]  # fmt: skip
"""``evil`` and ``inside-link`` are symlinks planted in the tree; ``evil2`` exists only behind them."""


# -- unix sockets -------------------------------------------------------------------------------------------


def test_every_listener_socket_is_0600_and_ours() -> None:
    with stack() as running:
        for target in running.targets().values():
            st = target.path.lstat()
            assert stat.S_ISSOCK(st.st_mode), target.name
            assert stat.S_IMODE(st.st_mode) == 0o600, f"{target.name}: {stat.S_IMODE(st.st_mode):o}"
            assert st.st_uid == os.geteuid(), target.name


@pytest.fixture
def directory() -> Iterator[Path]:
    with short_tmp() as path:
        yield path


def _bound_socket_file(path: Path, owner: int) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # a socket file nobody listens on: "stale", but not ours to take
    os.chown(path, owner, owner)


@pytest.mark.skipif(os.geteuid() != 0, reason="making files owned by another user needs root")
async def test_a_socket_file_someone_else_owns_is_never_taken_over(directory: Path) -> None:
    path = directory / "theirs.sock"
    _bound_socket_file(path, NOBODY)
    with pytest.raises(TransportError, match=f"belongs to uid {NOBODY}"):
        await Server().start(f"unix://{path}")
    assert path.lstat().st_uid == NOBODY  # untouched


@pytest.mark.skipif(os.geteuid() != 0, reason="making files owned by another user needs root")
def test_the_agent_command_refuses_it_naming_the_path(directory: Path) -> None:
    path = directory / "theirs.sock"
    _bound_socket_file(path, NOBODY)
    agent = subprocess.run(
        [sys.executable, "-m", "guest_agent", "--listen", f"unix://{path}", "--cgroupfs-root",
         str(FIXTURE.path / "cgroup")],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert agent.returncode == 1
    assert str(path) in agent.stderr
    assert "belongs to uid" in agent.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="making files owned by another user needs root")
@pytest.mark.parametrize(
    ("mode", "owner", "refused"),
    [
        (0o700, NOBODY, "belongs to uid"),  # another user's directory
        (0o777, 0, "writable by others"),  # anyone could replace our socket
        (0o770, 0, "writable by others"),
        (0o1777, 0, None),  # sticky, like /tmp: others cannot remove what is ours
        (0o755, 0, None),
    ],
)
async def test_the_socket_directory_is_checked(
    directory: Path, mode: int, owner: int, refused: str | None
) -> None:
    parent = directory / "run"
    parent.mkdir()
    os.chown(parent, owner, owner)
    parent.chmod(mode)
    server = Server()
    if refused is not None:
        with pytest.raises(TransportError, match=refused):
            await server.start(f"unix://{parent}/s.sock")
        assert not (parent / "s.sock").exists()
        return
    await server.start(f"unix://{parent}/s.sock")
    try:
        assert stat.S_IMODE((parent / "s.sock").stat().st_mode) == 0o600
    finally:
        await server.close()


# -- vsock --------------------------------------------------------------------------------------------------


def _vsock_port_taken(port: int) -> bool:
    family = getattr(socket, "AF_VSOCK", None)
    assert family is not None
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((0xFFFFFFFF, port))
    except OSError:
        return True
    finally:
        probe.close()
    return False


def _vsock_unavailable() -> str | None:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return "no AF_VSOCK in this Python"
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"the kernel refused AF_VSOCK: {exc}"
    return None


def test_a_vsock_agent_listens_on_its_port_and_nothing_else() -> None:
    reason = _vsock_unavailable()
    if reason is not None:
        pytest.skip(reason)
    port = next(p for p in range(47_000, 47_100) if not _vsock_port_taken(p))
    argv = [sys.executable, "-m", "guest_agent", "--listen", f"vsock://-1:{port}"]
    argv += ["--cgroupfs-root", str(FIXTURE.path / "cgroup"), "--meminfo", str(FIXTURE.path / "meminfo")]
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _vsock_port_taken(port):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the agent never bound its vsock port"
            time.sleep(0.02)
        agent = psutil.Process(process.pid)
        # Nothing else: no TCP/UDP socket, no unix socket with a name (the event loop's own socketpair
        # has none), and exactly one socket fd besides that pair.
        named = [c for c in agent.net_connections(kind="all") if c.laddr or c.raddr]
        assert named == [], named
        unix_pair = [c for c in agent.net_connections(kind="unix")]
        sockets = [fd for fd in os.listdir(f"/proc/{process.pid}/fd") if _is_socket_fd(process.pid, fd)]
        assert len(sockets) == len(unix_pair) + 1
        assert not _vsock_port_taken(port + 1) or port + 1 >= 47_100
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    assert not _vsock_port_taken(port)  # and it let go of the port on the way out


def _is_socket_fd(pid: int, fd: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    except FileNotFoundError:
        return False


# -- the agent reads, never writes, and stays inside its root ------------------------------------------------


def _tree_state(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``roots``: (mode, mtime ns, sha256 of the content or the link target)."""
    state = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                digest = ""
            state[str(path)] = (st.st_mode, st.st_mtime_ns, digest)
    return state


def _baited_tree(directory: Path) -> tuple[Path, Path]:
    """The fixture's v2 tree with symlinks out of it to a bait cgroup whose usage is BAIT_USAGE."""
    tree, bait = directory / "cgroup", directory / "bait"
    shutil.copytree(FIXTURE.path / "cgroup", tree, symlinks=True)
    container = FIXTURE.path / "cgroup" / str(FIXTURE.meta["container_path"]).strip("/")
    for name in ("evil", "evil2"):
        shutil.copytree(container, bait / name)
        (bait / name / "memory.current").write_text(f"{BAIT_USAGE}\n")
    (tree / "evil").symlink_to(bait / "evil", target_is_directory=True)
    (tree / "inside-link").symlink_to(bait, target_is_directory=True)
    return tree, bait


async def _every_method(client: Client, container_id: str) -> list[Code | int]:
    """Call every method the agent serves with ``container_id``; the status codes (usage when OK)."""
    stats = agent_pb2.StatsContainerRequest(container_id=container_id).SerializeToString()
    resources = resources_pb2.GetRequest(container_id=container_id).SerializeToString()
    outcomes: list[Code | int] = []
    for service, method, payload in [
        ("grpc.AgentService", "StatsContainer", stats),
        ("shimstats.agent.v1.Resources", "Get", resources),
    ]:
        try:
            raw = await client.call(service, method, payload, timeout=5)
        except TtrpcError as exc:
            outcomes.append(exc.code)
            continue
        if method == "StatsContainer":
            outcomes.append(
                agent_pb2.StatsContainerResponse.FromString(raw).cgroup_stats.memory_stats.usage.usage
            )
        else:
            outcomes.append(Code.OK)
    return outcomes


def _open_files(pid: int) -> dict[str, int]:
    """Path → open flags of every file ``pid`` holds open."""
    files = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
        except (FileNotFoundError, StopIteration):
            continue
        files[target] = flags
    return files


async def test_the_agent_is_read_only_and_ids_never_leave_its_root() -> None:
    with short_tmp() as directory:
        tree, bait = _baited_tree(directory)
        before = _tree_state(tree, bait)
        args = ["--cgroupfs-root", str(tree), "--meminfo", str(FIXTURE.path / "meminfo")]
        args += ["--container", f"{FIXTURE.request_id}={FIXTURE.meta['container_path']}"]
        with AgentProcess(directory, args) as agent:
            assert agent.process is not None
            async with await Client.connect(agent.address) as client:
                good = await _every_method(client, FIXTURE.request_id)
                whole = await _every_method(client, "")  # the empty id: the root cgroup, the whole guest
                hostile = {i[:20]: await _every_method(client, i) for i in HOSTILE_IDS}
                await client.call("grpc.Health", "Check", health_pb2.CheckRequest().SerializeToString())
                await client.call("grpc.Health", "Version", health_pb2.CheckRequest().SerializeToString())
            opened = _open_files(agent.process.pid)
            children = psutil.Process(agent.process.pid).children(recursive=True)
        after = _tree_state(tree, bait)

    assert good == [int(FIXTURE.file("memory", "memory.current")), Code.OK]
    assert whole[1] == Code.OK
    for container_id, outcome in hostile.items():
        assert set(outcome) <= {Code.INVALID_ARGUMENT, Code.NOT_FOUND}, (container_id, outcome)
    assert before == after, "the agent changed its cgroup tree"
    assert children == []
    ours = {path: flags for path, flags in opened.items() if path.startswith(str(directory))}
    assert any(path.startswith(str(tree)) for path in ours), "the agent should hold its stat files open"
    assert not any(path.startswith(str(bait)) for path in ours), "the agent opened the bait"
    writable = {p: f for p, f in ours.items() if f & os.O_ACCMODE != os.O_RDONLY and not p.endswith(".log")}
    assert writable == {}


async def test_the_adapter_refuses_hostile_ids_before_asking_the_agent() -> None:
    with stack() as running:
        adapter = running.targets()["adapter"]
        log_before = running.agent.log()
        async with await Client.connect(adapter.address) as client:
            codes = {}
            for container_id in HOSTILE_IDS:
                try:
                    await client.call(
                        TASK_SERVICE, "Stats", stats_request(container_id), timeout=5,
                        metadata=stats_metadata("k8s.io"),
                    )  # fmt: skip
                except TtrpcError as exc:
                    codes[container_id[:20]] = exc.code
        agent_log = running.agent.log()[len(log_before) :]
    # Only the three that are well-formed containerd identifiers reach the agent, which does not know them.
    asked = {"evil", "evil2", "inside-link"}
    assert codes == {i[:20]: Code.NOT_FOUND if i in asked else Code.INVALID_ARGUMENT for i in HOSTILE_IDS}
    assert all(f"'{i}'" in agent_log for i in asked)
    assert "'..'" not in agent_log


# -- what the code can do at all -----------------------------------------------------------------------------

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_OS = {"system", "popen", "fork", "forkpty"} | {
    f"exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")
}
FORBIDDEN_OS |= {f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}


def _sources() -> Iterator[Path]:
    for package in ("shimstats", "guest_agent"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "_proto" not in path.parts:
                yield path


def _problems(path: Path, base: Path = REPO) -> list[str]:
    """What the file does that the rules forbid, one line each (``file:line: what``)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(base)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{where}: {func.id}()")
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if func.value.id == "os" and func.attr in FORBIDDEN_OS:
                    found.append(f"{where}: os.{func.attr}()")
                spawns = func.value.id == "subprocess" or func.attr == "create_subprocess_exec"
                if (
                    spawns
                    and node.args
                    and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp))
                ):
                    found.append(f"{where}: {func.value.id}.{func.attr} with a command string")
                if func.value.id == "asyncio" and func.attr == "create_subprocess_shell":
                    found.append(f"{where}: asyncio.create_subprocess_shell")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{where}: shell=")
    return found


ALLOWED = {"shimstats/proxy/fork.py: os.fork()", "shimstats/proxy/delete.py: os.execve()"}
"""The exceptions, once each, both for what containerd waits for on every container (docs/benchmarks.md):
``start`` forks the proxy's serving process instead of starting a second interpreter (the child runs no
other program and leaves with ``os._exit``), and ``delete`` becomes the inner shim's own ``delete`` (the
program ``start`` resolved and ran, from an argv list, as subprocess runs it otherwise). A second call
anywhere is a new decision and fails here."""


def test_no_shell_no_eval_no_pickle_anywhere() -> None:
    sources = list(_sources())
    assert len(sources) > 40, "the scan must see the packages"
    problems = [problem for path in sources for problem in _problems(path)]
    allowed = [problem for problem in problems if re.sub(r":\d+:", ":", problem) in ALLOWED]
    assert [problem for problem in problems if problem not in allowed] == []
    assert len(allowed) == len(ALLOWED), f"each allowed call is made exactly once: {allowed}"


def test_the_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    # The scan above is only worth something if it finds these.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, pickle, subprocess\n"
        "subprocess.run('ls ' + x, shell=True)\n"
        "eval(data)\n"
        "os.system(cmd)\n"
        "subprocess.check_output(f'cat {name}')\n"
        "asyncio.sleep(0.1)\n"
    )
    problems = _problems(bad, tmp_path)
    assert len(problems) == 6, problems


def test_the_agent_never_imports_grpcio_or_psutil() -> None:
    code = "import sys, guest_agent.__main__\n"
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'psutil')))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]"
