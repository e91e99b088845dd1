"""The `shimstats` command line: one subcommand per job (see `shimstats --help`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shimstats import __version__
from shimstats.commands import (
    check_resources,
    compare,
    demo,
    discover,
    explain,
    exporter,
    guest_test,
    serve,
    stats,
    verify,
)

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

Each subcommand has its own --help with examples."""

COMMANDS = (demo, discover, stats, serve, verify, compare, explain, exporter, check_resources, guest_test)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shimstats",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"shimstats {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=args.log_level.upper(), format=log_format)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return 2
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
