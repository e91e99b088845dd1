"""`shimstats install-shim`: write containerd-shim-kata-stats-v2 as the fast launcher (proxy.launcher).

pip's console script of the same name works, but its interpreter loads ``site`` (every .pth file of the
environment) before each ``start`` and ``delete`` containerd runs, and for every pod's serving process. The
launcher this writes runs the interpreter with ``-S`` and the exact directories shimstats needs.
"""

from __future__ import annotations

import argparse
import json
import sys

from shimstats.proxy import BINARY
from shimstats.proxy.launcher import LauncherError, search_path, write_launcher

EXIT_OK, EXIT_CANNOT_WRITE = 0, 2

EPILOG = f"""\
examples:
  # containerd finds the shim on its PATH (every 1.6/1.7 release; see docs/proxy-shim.md)
  shimstats install-shim --dir /usr/local/bin
  # from a venv: the launcher runs that venv's interpreter, without activating it
  /opt/shimstats/bin/shimstats install-shim --dir /usr/local/bin --json

The launcher names this interpreter and the directories shimstats, guest_agent and protobuf are imported
from now: run it again after upgrading Python or moving the venv. It replaces {BINARY} (a file or a
symlink to pip's script) in DIR.

exit codes: 0 written; 2 could not write (DIR missing or not writable, an interpreter path a #! line cannot
hold)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-shim",
        help=f"write {BINARY} as a fast launcher (python -S) into a directory on containerd's PATH",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dir", required=True, metavar="DIR", help="where to write it, e.g. /usr/local/bin")
    p.add_argument(
        "--python", default=sys.executable, metavar="PATH", help="the interpreter (default: this one)"
    )
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        path = write_launcher(args.dir, args.python)
    except LauncherError as exc:
        print(f"shimstats install-shim: {exc}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    except (OSError, UnicodeError) as exc:  # UnicodeError: a path the file system encoding cannot hold
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"shimstats install-shim: cannot write into {args.dir!r}: {reason}", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    if args.json:
        print(json.dumps({"path": path, "python": args.python, "sys_path": search_path()}))
    else:
        print(f"wrote {path} (runs {args.python} -S)")
    return EXIT_OK
