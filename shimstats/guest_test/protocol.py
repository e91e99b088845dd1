"""The control channel between the host and the guest side: one JSON object per line, both ways.

It runs over its own virtio-serial port (the agent has two others), so it never mixes with ttrpc bytes.
Captured cgroup trees travel as gzip'd tar files in base64 (``pack``/``unpack``): a capture is tens of KiB.

guest → host: ``hello`` (kernel), ``ready`` (agent listening), ``phase`` (cgroup frozen; the capture read
before the host's Stats calls), ``after`` (the capture read after them), ``done``, ``error``.
host → guest: ``config`` (answer to hello), ``continue`` (Stats calls made; go on).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path
from typing import Any

CONTROL_PORT = "shimstats.control"
"""The virtio-serial port name of this channel (the guest finds /dev/vportNpM by it)."""
AGENT_PORTS = ("agent.channel.0", "agent.channel.1")
"""The agent's ports, one per host adapter: a serial port carries one connection (Kata 1.x's name)."""

MAX_LINE = 16 << 20
"""A message longer than this is refused (a capture is far smaller): a garbled stream must not eat memory."""

Message = dict[str, Any]


class ProtocolError(RuntimeError):
    """The other side sent something that is not a message of this protocol."""


def encode(message: Message) -> bytes:
    """One message as one line."""
    if not isinstance(message.get("type"), str):
        raise ValueError(f"a message needs a string 'type': {message!r}")
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """One line back into a message (with or without its newline)."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {line[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"not a message (an object with a string 'type'): {line[:200]!r}")
    return message


def pack(directory: Path) -> str:
    """A directory tree as base64 text of a .tar.gz, members named relative to it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(directory), arcname=".")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unpack(text: str, into: Path) -> None:
    """Undo ``pack`` into ``into``; refuses members that would land outside it or are not files/dirs/links
    within it."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(text)), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = (into / member.name).resolve()
            if not str(target).startswith(str(into.resolve())):
                raise ProtocolError(f"capture member {member.name!r} points outside the capture")
            if member.issym() and (member.linkname.startswith("/") or ".." in Path(member.linkname).parts):
                raise ProtocolError(f"capture member {member.name!r} links outside: {member.linkname!r}")
            if not (member.isfile() or member.isdir() or member.issym()):
                raise ProtocolError(f"capture member {member.name!r} is not a file, directory or link")
        if hasattr(tarfile, "data_filter"):  # Python 3.12+, and security releases of older ones
            tar.extractall(str(into), filter="data")
        else:
            tar.extractall(str(into))  # every member was checked above
