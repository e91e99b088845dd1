"""Where a shim's logs go in containerd 1.6/1.7, and in which shape.

* ``start``: containerd reads stdout and stderr *together* as the shim's address, so nothing may be
  written to either but the address. Our records go to the bundle's ``log`` fifo instead.
* the serving process: containerd opened the read end of the bundle's ``log`` fifo before ``start`` and
  copies whatever arrives to its own stderr; Go shims dup that fifo onto their stderr. We write there too.
* ``delete``: containerd reads stdout as a DeleteResponse and logs stderr as "cleanup warnings", so only
  warnings and errors go to stderr.

Lines are logfmt in the shape of containerd's own (logrus text) lines, so they read naturally next to
them: ``time="…" level=warning msg="…" runtime=io.containerd.kata-stats.v2 id=abc namespace=k8s.io``;
every ``extra`` a call passes becomes a key.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, TextIO

from guest_agent.logs import extra_fields
from shimstats.proxy import RUNTIME_TYPE

__all__ = ["LogfmtFormatter", "configure", "open_log_fifo"]

LOG_FIFO = "log"
_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-._/:@" for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``time="2024-01-02T03:04:05.678901000Z" level=info msg="…" runtime=… key=value…``."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = {"runtime": RUNTIME_TYPE, **(fields or {})}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        nanos = int((record.created % 1) * 1e9)
        level = _LEVELS.get(record.levelname, record.levelname.lower())
        parts = [f'time="{stamp}.{nanos:09d}Z"', f"level={level}", f"msg={_quote(record.getMessage())}"]
        extras = extra_fields(record)
        for key, value in {**self.fields, "logger": record.name, **extras}.items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def open_log_fifo(bundle: str) -> int | None:
    """A blocking write fd on ``BUNDLE/log`` when containerd is reading it, else None.

    Opened non-blocking first so that a fifo nobody reads fails at once (ENXIO) instead of hanging; a
    regular file there (tests, manual runs) is appended to.
    """
    try:
        fd = os.open(os.path.join(bundle, LOG_FIFO), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    os.set_blocking(fd, True)
    return fd


def configure(stream: TextIO, level: int, fields: dict[str, str] | None = None) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` as logfmt lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
