"""Argument types and options several `shimstats` commands share, so they read and check alike."""

from __future__ import annotations

import argparse
import re

from shimstats.ttrpc import AddressError, parse_address

DEFAULT_TIMEOUT = 5.0


def address(text: str) -> str:
    """argparse type: a ttrpc address, refused with the parser's usage message when it is not one."""
    try:
        parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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


def add_guest_source(p: argparse.ArgumentParser, *, agent_help: str, cgroup_help: str) -> None:
    """--agent ADDR or --cgroup PATH, one required: where the guest's own figures come from."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--agent", type=address, metavar="ADDR", help=agent_help)
    source.add_argument("--cgroup", metavar="PATH", help=cgroup_help)


def add_tolerance(p: argparse.ArgumentParser, default: int, what: str) -> None:
    """--tolerance BYTES: how far a live byte figure may move between two reads around a call."""
    p.add_argument(
        "--tolerance",
        type=int,
        default=default,
        metavar="BYTES",
        help=f"allowed difference for {what} (default: %(default)s)",
    )
