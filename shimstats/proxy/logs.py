"""Where a shim's logs go in containerd 1.6/1.7, and the logging handler of the proxy's serving process.

* ``start``: containerd reads stdout and stderr *together* as the shim's address, so nothing may be
  written to either but the address. Our records go to the bundle's ``log`` fifo instead.
* the serving process: containerd opened the read end of the bundle's ``log`` fifo before ``start`` and
  copies whatever arrives to its own stderr; Go shims dup that fifo onto their stderr. We write there too.
* ``delete``: containerd reads stdout as a DeleteResponse and logs stderr as "cleanup warnings", so only
  warnings and errors go to stderr.

Lines are logfmt in the shape of containerd's own (logrus text) lines (shimstats.proxy.logfmt writes them):
``time="…" level=warning msg="…" runtime=io.containerd.kata-stats.v2 id=abc namespace=k8s.io``; every
``extra`` a call passes becomes a key. ``start`` and ``delete`` write the same lines without the logging
module (shimstats.proxy.logfmt.ActionLog).
"""

from __future__ import annotations

import logging
from typing import TextIO

from guest_agent.logs import extra_fields
from shimstats.proxy import RUNTIME_TYPE
from shimstats.proxy.logfmt import LOG_FIFO, line, open_log_fifo

__all__ = ["LOG_FIFO", "LogfmtFormatter", "configure", "open_log_fifo"]

_LEVELS = {"WARNING": "warning", "CRITICAL": "fatal"}


class LogfmtFormatter(logging.Formatter):
    """``time="2024-01-02T03:04:05.678901000Z" level=info msg="…" runtime=… key=value…``."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = {"runtime": RUNTIME_TYPE, **(fields or {})}

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVELS.get(record.levelname, record.levelname.lower())
        fields = {**self.fields, "logger": record.name, **extra_fields(record)}
        error = self.formatException(record.exc_info) if record.exc_info else None
        return line(record.created, level, record.getMessage(), fields, error)


def configure(stream: TextIO, level: int, fields: dict[str, str] | None = None) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` as logfmt lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
