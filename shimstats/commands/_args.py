"""Argument types and options several `shimstats` commands share, so they read and check alike."""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys

from guest_agent.parse import U64_MAX
from shimstats.containerd_grpc import ContainerdError, grpc_target
from shimstats.ground_truth import NoGroundTruth, SampleSource, Source, open_source
from shimstats.resources import byte_value, parse_quantity
from shimstats.ttrpc import AddressError, parse_address

DEFAULT_TIMEOUT = 5.0


def address(text: str) -> str:
    """argparse type: a ttrpc address, refused with the parser's usage message when it is not one."""
    try:
        parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def grpc_address(text: str) -> str:
    """argparse type: a gRPC unix socket (containerd, the CRI): ``unix:///path`` or an absolute path.

    Refused now, as a usage error: any other scheme, and a path that exists but is not a socket (gRPC would
    only say "Connection refused" later, as a failed live source). A path that does not exist yet passes.
    """
    try:
        target = grpc_target(text)
    except ContainerdError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected unix:///path or an absolute socket path"
        ) from None
    path = target.removeprefix("unix:")
    path = "/" + path.lstrip("/") if path.startswith("//") else path
    if not path.strip("/"):
        raise argparse.ArgumentTypeError(f"{text!r}: no socket path (expected unix:///path)")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return text
    if not stat.S_ISSOCK(mode):
        raise argparse.ArgumentTypeError(f"{text!r}: {path} is not a socket")
    return text


NO_CRI = "none"
"""``--cri none``: ask no CRI (nor containerd) for names; sandboxes are shown and exported by id alone."""


def cri_address(text: str) -> str:
    """argparse type of ``--cri``: ``none``, or a gRPC unix socket as ``grpc_address`` takes it."""
    return NO_CRI if text == NO_CRI else grpc_address(text)


MAX_DURATION = 24 * 3600.0
"""The longest --timeout or --wait: a day, far inside what the wire (int64 nanoseconds) and the clock take."""
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"[0-9]+(?:\.[0-9]*)?"


def duration(text: str) -> float:
    """argparse type: seconds (``30``, ``1.5``) or a Go duration (``500ms``, ``2m``, ``1m30s``, ``1h``).

    One syntax for every --timeout and --wait. No sign, no exponent, no inf or nan: what is left is
    a finite number of seconds from 0 to MAX_DURATION.
    """
    if re.fullmatch(_NUMBER, text):
        value = float(text)
    else:
        parts = re.findall(rf"({_NUMBER})(ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (e.g. 30s, 500ms, 2m, 1m30s, or seconds: 2.5)"
            )
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than {MAX_DURATION / 3600:g}h")
    return value


def positive_duration(text: str) -> float:
    """argparse type: a duration above 0 (a deadline of 0 could never be met)."""
    value = duration(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration (e.g. 5s, 500ms)")
    return value


def add_timeout(p: argparse.ArgumentParser, default: float = DEFAULT_TIMEOUT, what: str = "deadline") -> None:
    """--timeout DURATION, as every command that calls anything has it."""
    p.add_argument(
        "--timeout",
        type=positive_duration,
        default=default,
        metavar="DURATION",
        help=f"{what}: seconds or 500ms, 5s, 1m (default: {default:g}s)",
    )


def add_timeout_and_json(p: argparse.ArgumentParser, json_help: str = "instead of a table") -> None:
    """--timeout (the call's deadline) and --json, as every one-shot command has them."""
    add_timeout(p)
    p.add_argument("--json", action="store_true", help=f"print one JSON object {json_help}")


MAX_SAMPLE = 1 << 20
"""Bytes read from --memory-stat at most: a memory.stat is a few KiB; this stops /dev/zero, not a file."""


def byte_count(text: str) -> int:
    """argparse type: bytes, as a number (``838860800``) or a Kubernetes quantity (``800Mi``, ``1G``)."""
    try:
        value = byte_value(parse_quantity(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: expected bytes, e.g. 838860800 or 800Mi") from None
    if value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} does not fit in 64 bits")
    return value


def limit_bytes(text: str) -> int:
    """argparse type: a memory limit in bytes as byte_count reads them, or ``max`` (v2's "no limit").
    Not 0: no process runs under it, and a share of it means nothing."""
    value = U64_MAX if text == "max" else byte_count(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a limit of 0 bytes leaves no room (no limit: max)")
    return value


def add_guest_source(p: argparse.ArgumentParser, *, agent_help: str, cgroup_help: str) -> None:
    """--agent ADDR, --cgroup PATH or --memory-stat FILE (with --usage), one required: where the guest's
    own figures come from. Open it with open_guest_source(args)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--agent", type=address, metavar="ADDR", help=agent_help)
    source.add_argument("--cgroup", metavar="PATH", help=cgroup_help)
    source.add_argument(
        "--memory-stat",
        metavar="FILE|-",
        help="or a memory.stat given by hand (a published sample, a bug report; - reads stdin), cgroup v1 "
        "or v2 (told by its keys), with --usage",
    )
    p.add_argument(
        "--usage",
        type=byte_count,
        metavar="BYTES",
        help="with --memory-stat: the usage that goes with it (v1 memory.usage_in_bytes, v2 memory.current); "
        "bytes or 800Mi",
    )
    p.add_argument(
        "--limit",
        type=limit_bytes,
        metavar="BYTES",
        help="with --memory-stat: the memory limit (v1 memory.limit_in_bytes, v2 memory.max; default: max)",
    )
    p.set_defaults(parser=p)


def read_sample(args: argparse.Namespace) -> SampleSource | None:
    """The --memory-stat source when one is given, read now (stdin cannot be read twice).

    --usage without --memory-stat, or --memory-stat without --usage, is a usage error (exit 2);
    an unreadable or malformed file is NoGroundTruth.
    """
    parser: argparse.ArgumentParser = args.parser
    if args.memory_stat is None:
        if args.usage is not None or args.limit is not None:
            parser.error("--usage and --limit go with --memory-stat")
        return None
    if args.usage is None:
        parser.error("--memory-stat needs --usage BYTES (v1 memory.usage_in_bytes, v2 memory.current)")
    name = "stdin" if args.memory_stat == "-" else args.memory_stat
    try:
        if args.memory_stat == "-":
            text = sys.stdin.read(MAX_SAMPLE)
        else:
            with open(args.memory_stat, encoding="ascii") as file:
                text = file.read(MAX_SAMPLE)
    except OSError as exc:
        raise NoGroundTruth(f"cannot read memory.stat {name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise NoGroundTruth(f"memory.stat {name} is not text: {exc.reason} at byte {exc.start}") from exc
    return SampleSource(text, name, usage=args.usage, limit=args.limit)


def open_guest_source(args: argparse.Namespace, sample: SampleSource | None) -> Source:
    """The source --agent, --cgroup or --memory-stat (read by read_sample) names."""
    if sample is not None:
        return sample
    return open_source(args.cgroup, args.agent, args.id, timeout=args.timeout)


def add_tolerance(p: argparse.ArgumentParser, default: int, what: str) -> None:
    """--tolerance BYTES: how far a live byte figure may move between two reads around a call."""
    p.add_argument(
        "--tolerance",
        type=int,
        default=default,
        metavar="BYTES",
        help=f"allowed difference for {what} (default: %(default)s)",
    )
