"""The pure parts of start/delete: reading an inner shim's answer, command lines, naming, bundle facts."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.containerd.types import mount_pb2
from shimstats.proxy.cli import build_parser
from shimstats.proxy.fork import SHARED_IMPORTS
from shimstats.proxy.launch import (
    TASK_V3_SERVICE,
    ShimArgs,
    StartError,
    daemon_argv,
    parse_start_output,
    sandbox_id,
)
from shimstats.proxy.launcher import search_path
from shimstats.proxy.options import runtime_options
from shimstats.proxy.settings import DaemonSettings
from shimstats.proxy.sockets import listen_unix, proxy_address, remove_if_stale, unix_path
from shimstats.ttrpc import AddressError
from shimstats.wire import TASK_SERVICE
from tests.integration.harness import short_tmp

INNER = "unix:///run/containerd/s/" + "ab" * 32


@pytest.mark.parametrize("printed", [INNER, f"{INNER}\n", f"  {INNER}  \n"])
def test_a_plain_address_is_task_v2(printed: str) -> None:
    assert parse_start_output(printed) == (INNER, TASK_SERVICE)


@pytest.mark.parametrize(("version", "service"), [(2, TASK_SERVICE), (3, TASK_V3_SERVICE)])
def test_the_json_answer_of_newer_shims(version: int, service: str) -> None:
    printed = json.dumps({"version": version, "address": INNER, "protocol": "ttrpc"})
    assert parse_start_output(printed) == (INNER, service)


@pytest.mark.parametrize(
    ("printed", "why"),
    [
        (json.dumps({"version": 3, "address": INNER, "protocol": "grpc"}), "speaks grpc"),
        (json.dumps({"version": 4, "address": INNER}), "version 4"),
        ('{"version": 2', "unreadable JSON"),
        ("time=... level=fatal msg=boom", "not a unix:// address"),
        ("vsock://3:1024", "not a unix:// address"),
        ("", "not a unix:// address"),
    ],
)
def test_other_answers_are_refused_with_what_was_printed(printed: str, why: str) -> None:
    with pytest.raises(StartError, match=why):
        parse_start_output(printed)


def test_argv_keeps_containerds_flags_and_order() -> None:
    args = ShimArgs("k8s.io", "c1", "/run/containerd/containerd.sock", "/usr/bin/containerd")
    assert args.argv("inner", "start") == [
        "inner", "-namespace", "k8s.io", "-address", "/run/containerd/containerd.sock",
        "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start",
    ]  # fmt: skip
    debug = ShimArgs("ns", "c1", "a", "p", bundle_flag="/b", debug=True)
    assert debug.argv("inner", "delete")[-5:] == ["c1", "-debug", "-bundle", "/b", "delete"]


def test_bundle_is_the_flag_or_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ShimArgs("ns", "c1").bundle == str(tmp_path)
    assert ShimArgs("ns", "c1", bundle_flag="/elsewhere").bundle == "/elsewhere"


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"io.kubernetes.cri.sandbox-id": "pod-1", "io.kubernetes.cri.container-type": "container"}, "pod-1"),
        ({"io.kubernetes.cri-o.SandboxID": "pod-2"}, "pod-2"),
        ({}, "c1"),
        (None, "c1"),
    ],
)
def test_sandbox_comes_from_the_bundle_annotations(
    tmp_path: Path, annotations: object, expected: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))
    assert sandbox_id(str(tmp_path), "c1") == expected


def test_sandbox_without_a_readable_spec_is_the_container(tmp_path: Path) -> None:
    assert sandbox_id(str(tmp_path), "c1") == "c1"
    (tmp_path / "config.json").write_text("{not json")
    assert sandbox_id(str(tmp_path), "c1") == "c1"


def test_our_socket_sits_next_to_the_inner_one_named_after_it() -> None:
    ours = proxy_address(INNER)
    digest = hashlib.sha256(f"shimstats-proxy:{INNER}".encode()).hexdigest()
    assert ours == f"unix:///run/containerd/s/{digest}"
    assert ours != INNER
    assert len(unix_path(ours)) == len(unix_path(INNER))  # 64 hex either way: fits where the inner's fits
    assert proxy_address("unix:///run/containerd/s/other") != ours
    with pytest.raises(AddressError):
        proxy_address("vsock://3:1024")


@pytest.mark.parametrize("builtin", [True, False])
def test_the_digest_is_sha256_with_or_without_cpythons_own(
    monkeypatch: pytest.MonkeyPatch, builtin: bool
) -> None:
    """proxy_address hashes with CPython's built-in SHA-256 (no OpenSSL to load at every start), else with
    hashlib: the same name either way, so a proxy of either kind finds the other's socket."""
    if not builtin:
        monkeypatch.setitem(sys.modules, "_sha2", None)  # None in sys.modules: that import fails
        monkeypatch.setitem(sys.modules, "_sha256", None)
    digest = hashlib.sha256(f"shimstats-proxy:{INNER}".encode()).hexdigest()
    assert proxy_address(INNER) == f"unix:///run/containerd/s/{digest}"


def _loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the ``watched`` top-level packages a fresh ``python -S`` holds after running ``code``, with
    the module path the proxy's launcher gives it (shimstats.proxy.launcher)."""
    held = f"{{m.split('.')[0] for m in sys.modules}} & {set(watched)!r}"
    probe = f"import sys\n{code}\nprint(' '.join(sorted({held})))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path())}
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_start_forks_before_loading_what_only_it_needs() -> None:
    """What ``start`` holds when it forks its serving process (the imports of shimstats.proxy.cli's _start:
    launch, config, bundle, the actions' log): none of what the server never needs (subprocess, the TOML
    parser), which start loads after the fork while the child imports the server; and nothing neither
    needs (logging: the actions write their lines with shimstats.proxy.logfmt; asyncio; protobuf; typing:
    the records are shimstats.named_tuple's; socket's enums: the probes, the socket pair and our listening
    socket are _socket's; contextlib)."""
    imports = (
        "import shimstats.proxy.cli, shimstats.proxy.bundle, shimstats.proxy.launch, shimstats.proxy.config, "
        "shimstats.proxy.logfmt, shimstats.proxy.delete, shimstats.ttrpc.address"
    )
    watched: tuple[str, ...] = ("subprocess", "tomllib", "tomli", "logging", "asyncio", "google", "shutil")
    watched = (*watched, "hashlib", "typing", "socket", "contextlib")
    assert _loaded_after(imports, watched) == []


def test_the_serving_process_answers_create_without_protobuf() -> None:
    """containerd's first call (Create, carrying the runtime options that name our TOML file) waits for the
    serving process: its server, the ttrpc envelope both ways and the options swap load no protobuf (issue
    16); the first Stats does (the agent's messages, the translation)."""
    options = runtime_options("/etc/shimstats/kata.toml")
    create = shim_pb2.CreateTaskRequest(id="c1", bundle="/run/c1", rootfs=[mount_pb2.Mount(type="overlay")])
    create.options.type_url, create.options.value = options.type_url, options.value
    code = (
        "import setproctitle, shimstats.proxy.serving, shimstats.proxy.relay\n"
        "from shimstats.proxy.options import inner_create\n"
        "from shimstats.ttrpc import framing\n"
        f"sent = framing.encode_request({TASK_SERVICE!r}, 'Create', {create.SerializeToString()!r})\n"
        "request = framing.decode_request(sent)\n"
        "payload = inner_create(request.payload, '/etc/shimstats/kata.toml', '/opt/kata.toml')\n"
        "assert b'/opt/kata.toml' in payload\n"
        "framing.decode_response(framing.encode_response(b'\\x08\\x01'))"
    )
    assert _loaded_after(code, ("google", "asyncio")) == []


FORK_POINT = (
    "import shimstats.proxy.cli, shimstats.proxy.bundle, shimstats.proxy.launch, shimstats.proxy.config, "
    "shimstats.proxy.logfmt, shimstats.ttrpc.address"
)


def _loaded_beyond(before: str, code: str) -> set[str]:
    """The modules a fresh ``python -S`` loads for ``code`` after ``before`` (launcher's module path)."""
    probe = f"import sys\n{before}\nheld = set(sys.modules)\n{code}\nprint(' '.join(set(sys.modules) - held))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path())}
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], env=env, cwd="/", capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_what_start_loads_just_before_its_fork_both_sides_load_after_it() -> None:
    """shimstats.proxy.fork.SHARED_IMPORTS: each is loaded by start after the fork (subprocess, the TOML
    parser) and by the serving child (its server), and none is loaded already, so loading them once before
    the fork spares one side the work; ``_load_shared_imports`` loads every module both sides load."""
    parent = _loaded_beyond(FORK_POINT, "import subprocess, shimstats.toml_file")
    server = "import setproctitle, shimstats.proxy.relay\nfrom shimstats.proxy.serving import run_server"
    child = _loaded_beyond(FORK_POINT, server)
    load = "from shimstats.proxy.fork import _load_shared_imports as load\nload()"
    preloaded = _loaded_beyond(FORK_POINT, load)
    assert set(SHARED_IMPORTS) <= parent & child
    assert parent & child <= preloaded  # nothing both load is left out (their own imports come with them)


def test_delete_loads_only_the_state_file_reader_and_the_probe() -> None:
    """The common delete (a state file, our server gone): run to where it becomes the inner shim's own
    delete, it has loaded none of start's modules (launch, config, the TOML parser, subprocess) and none
    of typing, socket's enums or contextlib (docs/benchmarks.md: each an import every delete paid)."""
    watched = ("typing", "socket", "contextlib", "subprocess", "tomllib", "logging", "google", "shimstats")
    with short_tmp() as bundle:  # socket paths: short
        assert _loaded_after(_delete_code(bundle), watched) == ["shimstats"]


def _delete_code(bundle: Path) -> str:
    inner = f"unix://{bundle}/inner.sock"
    state = {"inner_shim": str(bundle / "no-such-shim"), "inner_address": inner}
    (bundle / "shimstats-proxy.json").write_text(json.dumps({**state, "address": proxy_address(inner)}))
    code = (  # the inner shim cannot be run: StartError where the process would have become it
        "import shimstats.proxy.cli\n"
        "from shimstats.proxy.bundle import ShimArgs, StartError\n"
        "from shimstats.proxy.delete import run_delete\n"
        f"try:\n    run_delete(ShimArgs('k8s.io', 'c1', bundle_flag={str(bundle)!r}), {{}})\n"
        "except StartError as exc:\n    assert 'no-such-shim' in str(exc), exc\n"
        "else:\n    raise AssertionError('delete did not reach the inner shim')"
    )
    return code


def test_typing_compiles_no_annotation_of_the_records_start_and_delete_build() -> None:
    """No NamedTuple the actions load had typing turn its annotations into ForwardRef objects: typing
    compiles each string annotation of a typing.NamedTuple (and the first compile() builds the AST types,
    ~10M instructions of every delete: docs/benchmarks.md). Ours are shimstats.named_tuple's, which keeps
    them as written; the import of typing below comes after the records are built."""
    code = (
        "import shimstats.proxy.cli, shimstats.proxy.launch, shimstats.proxy.config, "
        "shimstats.proxy.delete, shimstats.proxy.options\n"
        "import typing\n"
        "for module in list(sys.modules.values()):\n"
        "    if module.__name__.split('.')[0] not in ('shimstats', 'guest_agent'):\n"
        "        continue\n"
        "    for record in vars(module).values():\n"
        "        if isinstance(record, type) and issubclass(record, tuple) and hasattr(record, '_fields'):\n"
        "            print('record', record.__name__)\n"
        "            kinds = [type(t) for t in record.__annotations__.values()]\n"
        "            if typing.ForwardRef in kinds:\n"
        "                print('compiled', record.__module__, record.__name__)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path())}
    done = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys\n{code}"], env=env, cwd="/", capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.split("\n")[:-1]
    records = {line.split()[1] for line in lines if line.startswith("record ")}
    assert {"ShimArgs", "BundleState", "DaemonSettings", "ProxyConfig", "KataSpec", "Address"} <= records
    assert [line for line in lines if line.startswith("compiled ")] == []


def test_naming_our_socket_loads_no_openssl() -> None:
    code = f"from shimstats.proxy.sockets import proxy_address\nproxy_address({INNER!r})"
    assert _loaded_after(code, ("_hashlib", "hashlib")) == []


def test_the_serving_process_gets_every_setting_back() -> None:
    """daemon_argv (written by start) parsed by the CLI (read by serve) gives the same settings."""
    args = ShimArgs(
        "k8s.io", "c1", "/run/containerd/containerd.sock", "/usr/bin/containerd", "/b", debug=True
    )
    settings = DaemonSettings(
        listen=proxy_address(INNER),
        inner_address=INNER,
        agent="hvsock:///run/vc/vm/pod/clh.sock:2048",
        inner_service=TASK_V3_SERVICE,
        metrics_format="v2",
        stats_fallback="error",
        stats_timeout=2.5,
        namespace="k8s.io",
        own_config="/etc/shimstats/kata.toml",
        inner_config_path="/opt/kata/configuration.toml",
        listen_fd=7,
    )
    launcher = "/usr/local/bin/containerd-shim-kata-stats-v2"  # the fast launcher runs itself again
    argv = daemon_argv(args, settings, [launcher])
    assert argv[0] == launcher
    assert daemon_argv(args, settings)[:3] == [sys.executable, "-m", "shimstats.proxy"]  # pip's script
    parsed = build_parser().parse_args(argv[1:])
    assert parsed.action == "serve"
    assert (parsed.namespace, parsed.id, parsed.address, parsed.bundle, parsed.debug) == (
        "k8s.io", "c1", "/run/containerd/containerd.sock", "/b", True,
    )  # fmt: skip
    back = DaemonSettings(
        listen=parsed.listen,
        inner_address=parsed.inner,
        agent=parsed.agent,
        inner_service=parsed.inner_service,
        metrics_format=parsed.metrics_format,
        stats_fallback=parsed.stats_fallback,
        stats_timeout=parsed.stats_timeout,
        namespace=parsed.namespace,
        own_config=parsed.own_config,
        inner_config_path=parsed.inner_config_path,
        listen_fd=parsed.listen_fd,
    )
    assert back == settings


def test_stale_sockets_go_live_ones_and_other_files_stay(tmp_path: Path) -> None:
    live, stale, plain = tmp_path / "live", tmp_path / "stale", tmp_path / "plain"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live))
    listener.listen()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale))  # bound, never listening: connecting is refused, as after a server exited
    dead.close()
    plain.write_text("not a socket")
    try:
        assert remove_if_stale(str(live)) is False
        assert live.exists()
        assert remove_if_stale(str(stale)) is True
        assert not stale.exists()
        assert remove_if_stale(str(plain)) is False
        assert plain.read_text() == "not a socket"
        assert remove_if_stale(str(tmp_path / "absent")) is True
    finally:
        listener.close()
    assert remove_if_stale(str(live)) is True  # its server is gone now
    assert not live.exists()


def test_start_binds_a_private_listening_socket_and_yields_to_a_live_one(tmp_path: Path) -> None:
    """listen_unix: what start hands its serving process (a stale file is replaced, a live one kept)."""
    path = tmp_path / "run" / "s" / "ours"
    ours = listen_unix(str(path))
    assert ours is not None
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        caller = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        caller.connect(str(path))  # listening already: the kernel queues callers until the server accepts
        caller.close()
        assert listen_unix(str(path)) is None  # a concurrent start for the same inner shim: ours stays
        assert path.exists()
    finally:
        ours.close()
    again = listen_unix(str(path))  # nobody accepts any more: the stale file is replaced
    assert again is not None
    again.close()
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    with pytest.raises(FileExistsError, match="not a socket"):
        listen_unix(str(plain))
    assert plain.read_text() == "not a socket"
