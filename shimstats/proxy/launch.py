"""The ``start`` action containerd runs (containerd 1.6/1.7, docs/spec/metrics.md §1.3), and what ``delete``
(shimstats.proxy.delete) borrows from it in the rare case.

containerd runs ``<shim> -namespace NS -address GRPC -publish-binary CONTAINERD -id ID [-debug] start`` in
the bundle directory, with TTRPC_ADDRESS in the environment and the runtime options (an Any) on stdin, and
takes everything the process prints (stdout and stderr together) as the address to dial. Our ``start``:
1. finds our config (the runtime options' config_path, else $SHIMSTATS_CONFIG) and the inner shim;
2. runs the inner shim's ``start`` with the same flags, environment and directory, giving it the options
   meant for it, and reads its address (plain = task v2 over ttrpc; the JSON form of newer shims too);
3. binds and listens on a socket named after that address (shimstats.proxy.sockets), unless one already
   answers there (the inner shim groups containers: one proxy per inner shim), and hands it to our serving
   process (shimstats.proxy.fork: forked before step 1, so that it imports while we work), as containerd's
   own shims hand theirs to the serving child they re-execute: containerd may connect at once, and the
   kernel queues the connection until the server accepts it. The fork comes before ``start`` imports what
   only it needs (subprocess, the TOML parser), which then load while the child imports the server;
4. records what ``delete`` will need in the bundle, points the bundle's ``address`` file at us (containerd
   reads it to reconnect after a restart) and prints our address, without waiting for the server's imports.

Both actions import only what they use (no asyncio, no adapter; protobuf only when an inner shim must be
released, the runtime options being read by shimstats.protowire): containerd waits for them on every
container start and delete.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from shimstats.proxy import CONFIG_ENV
from shimstats.proxy.bundle import BundleState, ShimArgs, StartError, write_atomic
from shimstats.proxy.fork import ServerChild
from shimstats.proxy.logfmt import log
from shimstats.proxy.settings import TASK_V2_SERVICE, TASK_V3_SERVICE, DaemonSettings
from shimstats.proxy.sockets import accepts, listen_unix, proxy_address, unix_path
from shimstats.ttrpc.address import AddressError

# subprocess and the config file's TOML parser load after run_start forked the serving process (which needs
# neither); delete loads the TOML parser only without a state file.
TYPE_CHECKING = False
if TYPE_CHECKING:  # names for type checkers only (start does not even import typing)
    import subprocess

    from shimstats.proxy.config import ProxyConfig
    from shimstats.proxy.settings import Fallback

__all__ = [
    "TASK_V3_SERVICE",
    "ShimArgs",
    "StartError",
    "daemon_argv",
    "find_config",
    "parse_start_output",
    "release_inner",
    "run_inner",
    "run_start",
    "sandbox_id",
]

ADDRESS_FILE = "address"
INNER_START_TIMEOUT = 60.0
SANDBOX_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID")
_HANDOVER_TIMEOUT = 5.0
PYTHON_COMMAND = (sys.executable, "-m", "shimstats.proxy")
"""How the serving process runs when ``start`` did not come from the fast launcher (shimstats.proxy.launcher,
which passes its own path instead)."""


def parse_start_output(text: str) -> tuple[str, str]:
    """(address, Task service name) from what an inner shim's ``start`` printed."""
    text = text.strip()
    service = TASK_V2_SERVICE
    if text.startswith("{"):
        try:
            answer = json.loads(text)
            version, address, protocol = (
                answer.get("version", 2),
                answer["address"],
                answer.get("protocol", "ttrpc"),
            )
        except (ValueError, KeyError, AttributeError):
            raise StartError(f"the inner shim's start printed unreadable JSON: {text!r}") from None
        if protocol != "ttrpc" or version not in (2, 3):
            raise StartError(
                f"the inner shim speaks {protocol} version {version}; the proxy forwards ttrpc v2/v3"
            )
        service = TASK_V3_SERVICE if version == 3 else TASK_V2_SERVICE
        text = str(address)
    try:
        unix_path(text)
    except AddressError:
        raise StartError(f"the inner shim's start printed {text!r}, not a unix:// address") from None
    return text, service


def sandbox_id(bundle: str, container_id: str) -> str:
    """The pod sandbox a container belongs to (CRI's annotation in config.json), else its own id."""
    try:
        with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
            annotations = json.load(f).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return container_id
    for key in SANDBOX_ANNOTATIONS:
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return container_id


def find_config(options_path: str, environ: Mapping[str, str]) -> ProxyConfig:
    from shimstats.proxy.config import ConfigError, load_config

    path = options_path or environ.get(CONFIG_ENV, "")
    if not path:
        raise ConfigError(
            f"no proxy config: set {CONFIG_ENV} in containerd's environment "
            "or ConfigPath in the runtime's options"
        )
    return load_config(path)


def daemon_argv(
    args: ShimArgs, settings: DaemonSettings, command: Sequence[str] = PYTHON_COMMAND
) -> list[str]:
    """The serving process's command line: ``command`` (what runs this program), containerd's flags, then
    every setting as a flag (visible in ps)."""
    argv = ShimArgs(args.namespace, args.id, args.address, args.publish_binary, args.bundle, args.debug).argv(
        "", "serve"
    )
    flags = [
        "--listen", settings.listen,
        "--inner", settings.inner_address,
        "--inner-service", settings.inner_service,
        "--agent", settings.agent,
        "--metrics-format", settings.metrics_format,
        "--stats-fallback", settings.stats_fallback,
        "--stats-timeout", repr(settings.stats_timeout),
    ]  # fmt: skip
    if settings.own_config:
        flags += ["--own-config", settings.own_config, "--inner-config-path", settings.inner_config_path]
    if settings.listen_fd >= 0:
        flags += ["--listen-fd", str(settings.listen_fd)]
    return [*command, *argv[1:-1], *flags, "serve"]


def run_inner(
    argv: Sequence[str], action: str, environ: Mapping[str, str], timeout: float, *, stdin: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    """Run the inner shim's ``action`` (start: stderr joins stdout, as containerd reads it; delete: apart).

    StartError names the shim when it cannot be run or does not finish within ``timeout``.
    """
    import subprocess  # here: the serving process, forked before (shimstats.proxy.fork), never needs it

    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if action == "start" else subprocess.PIPE,
            env=dict(environ),
            timeout=timeout,
            check=False,
        )
    except OSError as exc:
        raise StartError(f"cannot run the inner shim {argv[0]}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise StartError(f"the inner shim {argv[0]} did not finish {action} within {timeout:g}s") from None


def _inner_start(argv: Sequence[str], options: bytes, environ: Mapping[str, str]) -> str:
    done = run_inner(argv, "start", environ, INNER_START_TIMEOUT, stdin=options)
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise StartError(f"the inner shim {argv[0]} failed to start ({done.returncode}): {output.strip()}")
    return output


def run_start(
    args: ShimArgs,
    stdin: bytes,
    environ: Mapping[str, str],
    fallback: Fallback | None = None,
    *,
    command: Sequence[str] | None = None,
) -> str:
    """The ``start`` action; returns the address to print. ConfigError / StartError say why not.
    ``command`` runs this program again, as the serving process (default: PYTHON_COMMAND)."""
    bundle = args.bundle
    sandbox = sandbox_id(bundle, args.id)
    # A container of its own group (a pod's sandbox, a plain ctr run) gets a new inner shim, so a new
    # server of ours: fork it now, to import while we work. Other containers join their sandbox's.
    early = None
    if sandbox == args.id:
        early = ServerChild(bundle, _log_fields(args), debug=args.debug)
    try:
        return _start(args, stdin, environ, fallback, command or PYTHON_COMMAND, sandbox, early)
    finally:
        if early is not None:
            early.cancel()


def _start(
    args: ShimArgs,
    stdin: bytes,
    environ: Mapping[str, str],
    fallback: Fallback | None,
    command: Sequence[str],
    sandbox: str,
    early: ServerChild | None,
) -> str:
    from shimstats.proxy.config import resolve_inner_shim

    bundle = args.bundle
    inner_options, options_path = _options(stdin)
    config = find_config(options_path, environ)
    inner_shim = resolve_inner_shim(config.inner_shim, environ.get("PATH", os.defpath))
    agent = config.agent_address(container_id=args.id, sandbox=sandbox, namespace=args.namespace)
    output = _inner_start(args.argv(inner_shim, "start"), inner_options(config.inner_config_path), environ)
    inner_address, inner_service = parse_start_output(output)
    address = proxy_address(inner_address)
    settings = DaemonSettings(
        listen=address,
        inner_address=inner_address,
        agent=agent,
        inner_service=inner_service,
        metrics_format=config.metrics_format,
        stats_fallback=fallback or config.stats_fallback,
        stats_timeout=config.stats_timeout,
        namespace=args.namespace,
        own_config=options_path,
        inner_config_path=config.inner_config_path,
    )
    BundleState(inner_shim, inner_address, address, inner_service).save(bundle)
    try:
        _serve_at(args, settings, command, early)
    except (StartError, OSError):
        release_inner(args, inner_address, inner_service)
        raise
    write_atomic(os.path.join(bundle, ADDRESS_FILE), address)
    log.info("started", id=args.id, namespace=args.namespace, address=address, inner=inner_address)
    return address


def _serve_at(
    args: ShimArgs, settings: DaemonSettings, command: Sequence[str], early: ServerChild | None
) -> None:
    """Bind our socket and hand it to a serving process (the early one, else one forked now), unless a
    server of ours already listens there."""
    path = unix_path(settings.listen)
    if accepts(path):
        return  # the inner shim groups containers, and our server for it is up
    listener = listen_unix(path)
    if listener is None:
        return  # a concurrent start for the same inner shim bound it first
    try:
        settings = settings._replace(listen_fd=listener.fileno())
        title = " ".join(daemon_argv(args, settings, command))  # what ps shows: serve, run by hand
        child = early or ServerChild(args.bundle, _log_fields(args), debug=args.debug)
        if not child.hand_over(title, settings):
            raise StartError("the proxy's server exited before it could take its socket (see its log)")
    finally:
        listener.close()  # the serving process holds it now


def _log_fields(args: ShimArgs) -> dict[str, str]:
    return {"id": args.id, "namespace": args.namespace}


def _options(stdin: bytes) -> tuple[Callable[[str], bytes], str]:
    """(what the inner shim's start gets on stdin, given inner_config_path; config_path in the options).

    protobuf is imported only when containerd sent options (CRI does, ``ctr run`` without
    ``--runtime-config-path`` does not).
    """
    if not stdin:
        return (lambda inner_config_path: b""), ""
    from shimstats.proxy.options import OptionsError, config_path_of, decode_any, for_inner

    try:
        options = decode_any(stdin)
        options_path = config_path_of(options)
    except OptionsError as exc:
        raise StartError(str(exc)) from None

    def inner(inner_config_path: str) -> bytes:
        given = for_inner(options, options_path, inner_config_path)
        return given.encode() if given is not None else b""

    return inner, options_path


def release_inner(args: ShimArgs, inner_address: str, service: str) -> None:
    """Ask a running inner shim to drop the task and exit when it has no other (best effort)."""
    path = unix_path(inner_address)
    if not accepts(path):
        return
    # Only here (a failed start, a delete after our server died): the ttrpc client and the Task messages.
    import contextlib

    from shimstats._proto.containerd.task.v2 import shim_pb2
    from shimstats.ttrpc import SyncClient, TtrpcError
    from shimstats.wire import NAMESPACE_KEY

    metadata = {NAMESPACE_KEY: args.namespace}
    try:
        with SyncClient(inner_address, timeout=_HANDOVER_TIMEOUT) as client:
            for method, request in (
                ("Delete", shim_pb2.DeleteRequest(id=args.id)),
                ("Shutdown", shim_pb2.ShutdownRequest(id=args.id)),
            ):
                with contextlib.suppress(TtrpcError):
                    client.call(service, method, request.SerializeToString(), metadata=metadata)
    except OSError as exc:
        log.warning(f"cannot reach the inner shim to release it: {exc}", id=args.id)
