"""The command line containerd runs: ``containerd-shim-kata-stats-v2 [flags] start|delete``.

The flags are the Go shims' (single dash, as containerd writes them; a double dash works too). ``serve`` is
the serving process ``start`` launches; its extra flags carry what ``start`` resolved. Exit status 0 on
success; on failure 1 and one line on stderr, which containerd shows in its error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from shimstats.proxy import BINARY, CONFIG_ENV, RUNTIME_TYPE
from shimstats.proxy.settings import FALLBACKS, FORMATS, TASK_V2_SERVICE

TYPE_CHECKING = False
if TYPE_CHECKING:  # start and delete import only what they use (not even typing): containerd waits for them
    import argparse
    from typing import Any, NoReturn

    from shimstats.proxy.bundle import ShimArgs

__all__ = ["build_parser", "main"]

EPILOG = f"""\
containerd runs this binary for the runtime {RUNTIME_TYPE}; people rarely do.
The proxy's TOML file comes from the runtime options' ConfigPath or ${CONFIG_ENV}; see docs/proxy-shim.md.

actions:
  start    start the inner shim and our server in front of it; print our address
  delete   clean up after a shim that went away (the inner shim's delete; DeleteResponse on stdout)"""

GO_FLAGS: dict[str, tuple[str, Any, str]] = {
    "namespace": ("namespace", "", "namespace that owns the shim"),
    "id": ("id", "", "id of the task"),
    "address": ("address", "", "grpc address back to containerd"),
    "publish-binary": ("publish_binary", "containerd", "containerd binary"),
    "bundle": ("bundle", "", "bundle path (default: the working directory)"),
    "socket": ("socket", "", "accepted and ignored (Go shims' flag)"),
    "debug": ("debug", False, "debug logs"),
    "v": ("version", False, "print the version and exit"),
}
"""The flags containerd passes to every shim (name: destination, default, help); False marks a switch.
Written ``-name`` (as containerd does) or ``--name``."""
OUR_FLAGS: dict[str, tuple[str, Any, Callable[[str], Any], tuple[str, ...]]] = {
    "stats-fallback": ("stats_fallback", None, str, FALLBACKS),
    "listen": ("listen", "", str, ()),
    "inner": ("inner", "", str, ()),
    "inner-service": ("inner_service", TASK_V2_SERVICE, str, ()),
    "agent": ("agent", "", str, ()),
    "metrics-format": ("metrics_format", "auto", str, FORMATS),
    "stats-timeout": ("stats_timeout", 10.0, float, ()),
    "own-config": ("own_config", "", str, ()),
    "inner-config-path": ("inner_config_path", "", str, ()),
    "listen-fd": ("listen_fd", -1, int, ()),
}
"""``--stats-fallback`` and the serving process's flags (destination, default, type, choices), ``--name``."""
ACTIONS = ("start", "delete", "serve")


def _fast_flags(argv: Sequence[str]) -> argparse.Namespace | None:
    """The command lines containerd and ``start`` write, read without argparse (whose import and help
    formatter cost every container start and delete ~10 ms, and the serving process ~1 MB); None for
    anything else (help, a mistake, an unusual spelling), which the full parser then reads and explains."""
    from types import SimpleNamespace

    values: dict[str, Any] = {dest: default for dest, default, _ in GO_FLAGS.values()}
    values.update({dest: default for dest, default, _, _ in OUR_FLAGS.values()}, action=None)
    index = 0
    while index < len(argv):
        token = argv[index]
        if token in ACTIONS and index == len(argv) - 1:
            values["action"] = token
            break
        name = token[2:] if token.startswith("--") else token[1:] if token.startswith("-") else ""
        if name in GO_FLAGS and GO_FLAGS[name][1] is False:
            values[GO_FLAGS[name][0]] = True
            index += 1
            continue
        if index + 1 >= len(argv) or argv[index + 1].startswith("-"):
            return None
        value = argv[index + 1]
        if name in GO_FLAGS:
            values[GO_FLAGS[name][0]] = value
        elif token.startswith("--") and name in OUR_FLAGS:
            dest, _, kind, choices = OUR_FLAGS[name]
            try:
                values[dest] = kind(value)
            except ValueError:
                return None
            if choices and value not in choices:
                return None
        else:
            return None
        index += 2
    return SimpleNamespace(**values)  # type: ignore[return-value]  # the attributes the parser sets


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog=BINARY,
        description="containerd shim v2 that forwards every task call to the real shim (Kata) and answers "
        "Stats from the guest agent with working set = usage - inactive_file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for name, (dest, default, text) in GO_FLAGS.items():  # -name as containerd writes it, and --name
        if default is False:
            parser.add_argument(f"-{name}", f"--{name}", dest=dest, action="store_true", help=text)
        else:
            parser.add_argument(f"-{name}", f"--{name}", dest=dest, default=default, help=text)
    parser.add_argument(
        "--stats-fallback",
        choices=FALLBACKS,
        default=None,
        help="when the guest agent is unreachable: pass the inner shim's Stats through (inner) or fail "
        "with UNAVAILABLE (error); overrides the config's stats_fallback (default there: inner)",
    )
    serving = parser.add_argument_group("serve (set by start)")
    serving.add_argument("--listen", default="", metavar="ADDR")
    serving.add_argument("--inner", default="", metavar="ADDR")
    serving.add_argument("--inner-service", default=TASK_V2_SERVICE, metavar="NAME")
    serving.add_argument("--agent", default="", metavar="ADDR")
    serving.add_argument("--metrics-format", choices=FORMATS, default="auto")
    serving.add_argument("--stats-timeout", type=float, default=10.0, metavar="SECONDS")
    serving.add_argument("--own-config", default="", metavar="PATH")
    serving.add_argument("--inner-config-path", default="", metavar="PATH")
    serving.add_argument("--listen-fd", type=int, default=-1, metavar="FD", help="the socket start bound")
    parser.add_argument("action", nargs="?", choices=("start", "delete", "serve"), help="what to do")
    return parser


def _fail(message: str) -> int:
    print(f"{BINARY}: {message}", file=sys.stderr)
    return 1


def _log_fields(shim: ShimArgs) -> dict[str, str]:
    return {"id": shim.id, "namespace": shim.namespace, "pid": str(os.getpid())}


def _start(shim: ShimArgs, args: argparse.Namespace, command: Sequence[str] | None) -> int:
    from shimstats.proxy.bundle import StartError
    from shimstats.proxy.config import ConfigError
    from shimstats.proxy.launch import run_start
    from shimstats.proxy.logfmt import DEBUG, INFO, log, open_log_fifo
    from shimstats.ttrpc.address import AddressError

    fd = open_log_fifo(shim.bundle)
    if fd is not None:  # stdout and stderr are the address containerd reads: logs go to the fifo only
        log.configure(os.fdopen(fd, "w", buffering=1), DEBUG if args.debug else INFO, _log_fields(shim))
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        address = run_start(shim, stdin, os.environ, args.stats_fallback, command=command)
    except (ConfigError, StartError, AddressError, OSError) as exc:
        log.error(f"start failed: {exc}")
        return _fail(str(exc))
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def _delete(shim: ShimArgs, args: argparse.Namespace) -> int:
    from shimstats.proxy.bundle import StartError
    from shimstats.proxy.delete import run_delete

    def prepare_logs() -> None:
        from shimstats.proxy.logfmt import DEBUG, WARNING, log

        # containerd logs this stderr as "cleanup warnings": warnings and worse only, unless -debug.
        log.configure(sys.stderr, DEBUG if args.debug else WARNING, _log_fields(shim))

    try:
        status, out, err = run_delete(shim, os.environ, prepare_logs)
    except (StartError, OSError, ValueError) as exc:  # ValueError: ConfigError, without importing config
        return _fail(str(exc))
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    sys.stdout.buffer.write(out)  # the inner shim's DeleteResponse, byte for byte
    sys.stdout.flush()
    return status


def _serve(shim: ShimArgs, args: argparse.Namespace) -> int:
    """``serve`` run directly (by hand, by tests): fd 1 gets "ready" once we accept calls, then closes."""
    from shimstats.proxy.serving import run_server
    from shimstats.proxy.settings import DaemonSettings

    if not (args.listen and args.inner and args.agent):
        return _fail("serve needs --listen, --inner and --agent (start passes them, and --listen-fd)")
    settings = DaemonSettings(
        listen=args.listen,
        inner_address=args.inner,
        agent=args.agent,
        inner_service=args.inner_service,
        metrics_format=args.metrics_format,
        stats_fallback=args.stats_fallback or "inner",
        stats_timeout=args.stats_timeout,
        namespace=shim.namespace,
        own_config=args.own_config,
        inner_config_path=args.inner_config_path,
        listen_fd=args.listen_fd,
    )
    announced = False

    def ready() -> None:
        nonlocal announced
        os.write(1, b"ready\n")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # closes the pipe: the reader sees the end
        os.close(devnull)
        announced = True

    def failed(message: str) -> None:
        if not announced:
            os.write(1, f"error: {message}\n".encode())

    return run_server(settings, debug=args.debug, fields=_log_fields(shim), ready=ready, failed=failed)


def main(argv: Sequence[str] | None = None, command: Sequence[str] | None = None) -> int:
    """Run one action; ``command`` runs this program again (``start`` launches the serving process with
    it; default ``python -m shimstats.proxy``)."""
    args = _fast_flags(sys.argv[1:] if argv is None else argv)
    if args is None:
        args = build_parser().parse_args(argv)
    if args.version:
        from shimstats import __version__

        print(f"{BINARY}:\n  Version:  shimstats {__version__}\n  Python:   {sys.version.split()[0]}")
        return 0
    if not args.namespace:
        return _fail("shim namespace cannot be empty")
    if not args.action:
        return _fail("an action is required: start or delete")
    from shimstats.proxy.bundle import ShimArgs

    shim = ShimArgs(args.namespace, args.id, args.address, args.publish_binary, args.bundle, args.debug)
    if args.action == "start":
        return _start(shim, args, command)
    if args.action == "delete":
        return _delete(shim, args)
    return _serve(shim, args)


def run(launcher: str | None = None) -> NoReturn:
    """The entry of pip's console script and of the fast launcher (``launcher``: its path, which then
    also runs the serving process): ``main``, then leave without the interpreter's teardown.

    containerd waits for ``start`` and ``delete`` to exit; tearing down every module took longer than
    the action's own work (about 90 ms measured under strace, docs/benchmarks.md). Output is flushed
    first (the actions' log lines are flushed as they are written, shimstats.proxy.logfmt); the proxy
    registers no other exit handlers.
    """
    status = main(command=[os.path.abspath(launcher)] if launcher else None)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib.suppress: an import (~3M instructions) of every start and delete
            stream.flush()
        except (OSError, ValueError):
            pass
    logging = sys.modules.get("logging")
    if logging is not None:  # the serving process run by hand (serve) logs through it
        logging.shutdown()
    os._exit(status)


if __name__ == "__main__":
    run()
