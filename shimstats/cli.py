"""The `shimstats` command line: one subcommand per job (see `shimstats --help`).

This module imports only the standard library at the top: the subcommands (protobuf, asyncio, ...) are
imported inside main(), under the same guard as the command itself, so that Ctrl-C during those first
few hundred milliseconds, a closed stdout or an unforeseen error still ends in one line and an exit code
from the table in shimstats.commands._exit, never a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from shimstats.commands import _exit  # no imports of its own: Ctrl-C is not yet guarded here

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

DESCRIPTION = """\
Make Kata Containers report container memory the way containerd and the kubelet expect.

Kubernetes judges a container by its working set = usage - inactive file cache. Kata's shims
get the numbers from an agent inside the VM and often lose inactive_file, so the page cache
counts as used memory. shimstats reads the guest cgroup correctly and answers containerd's
Task/Stats with the right numbers."""

EPILOG = """\
start here:
  shimstats demo                       the whole path on this machine, one command
  shimstats stats --shim ADDR --id ID  what containerd's CRI would report for a task

Each subcommand has its own --help with examples. Common flags (--log-level) go before or after it.

"""

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from shimstats import __version__
    from shimstats.commands import (
        check_resources,
        compare,
        demo,
        discover,
        explain,
        exporter,
        guest_test,
        install_shim,
        serve,
        stats,
        verify,
    )

    parser = argparse.ArgumentParser(
        prog="shimstats",
        description=DESCRIPTION,
        epilog=EPILOG + _exit.TABLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shimstats {__version__}")
    parser.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in (
        demo,
        discover,
        stats,
        serve,
        verify,
        compare,
        explain,
        exporter,
        check_resources,
        guest_test,
        install_shim,
    ):
        command.add_parser(sub)
    for subparser in sub.choices.values():
        # The same flag after the subcommand; SUPPRESS keeps the value given before it when absent here.
        subparser.add_argument(
            "--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS, help="as shimstats --log-level"
        )
    return parser


def _run(argv: Sequence[str] | None) -> int:
    import logging

    parser = build_parser()
    args = parser.parse_args(argv)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    # force: a handler on the stderr of this call, not on one an earlier in-process call left behind
    logging.basicConfig(level=args.log_level.upper(), format=log_format, force=True)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return _exit.CANNOT_CHECK
    code: int = args.run(args)
    sys.stdout.flush()  # a closed pipe shows here, inside the guard, rather than at interpreter exit
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush has nowhere to fail (Python docs,
    "Note on SIGPIPE" in the signal module)."""
    import os

    try:
        fileno = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fileno)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code. argparse's own usage errors still exit 2 via SystemExit."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("shimstats: interrupted", file=sys.stderr)
        return _exit.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return _exit.OUTPUT_CLOSED
    except Exception as exc:  # the last guard: one line, the traceback only in debug logs
        import logging

        logging.getLogger("shimstats").debug("unexpected error", exc_info=True)
        print(f"shimstats: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _exit.CANNOT_CHECK


if __name__ == "__main__":
    sys.exit(main())
