"""Argument types and options several `shimstats` commands share, so they read and check alike."""

from __future__ import annotations

import argparse

from shimstats.ttrpc import AddressError, parse_address

DEFAULT_TIMEOUT = 5.0


def address(text: str) -> str:
    """argparse type: a ttrpc address, refused with the parser's usage message when it is not one."""
    try:
        parse_address(text)
    except AddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_timeout_and_json(p: argparse.ArgumentParser, json_help: str = "instead of a table") -> None:
    """--timeout (the call's deadline) and --json, as every one-shot command has them."""
    p.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"deadline (default: {DEFAULT_TIMEOUT:g})",
    )
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
