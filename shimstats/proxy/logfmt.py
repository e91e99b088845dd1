"""The proxy's log line, and the log of the ``start`` and ``delete`` actions, without the logging module.

Lines are logfmt in the shape of containerd's own (logrus text) lines, so they read naturally next to them:
``time="…" level=warning msg="…" runtime=io.containerd.kata-stats.v2 id=abc namespace=k8s.io``.
``line`` is the one place that shape is written: the serving process logs through the logging module with
shimstats.proxy.logs' formatter, which calls it; ``start`` and ``delete`` log through ``ActionLog``, which
writes the same lines without importing logging (with traceback, string, threading and weakref it was
about 30M instructions, a sixth of what every container start through the proxy executes:
docs/benchmarks.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from shimstats.proxy import RUNTIME_TYPE

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (start and delete load this module)
    from typing import Any, TextIO

__all__ = [
    "DEBUG",
    "ERROR",
    "INFO",
    "LOG_FIFO",
    "WARNING",
    "ActionLog",
    "line",
    "log",
    "open_log_fifo",
    "quote",
]

LOG_FIFO = "log"
"""The bundle's fifo containerd copies a shim's logs from."""
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
"""The logging module's level numbers, so that a level reads the same in both."""
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}
"""logrus's level names."""
LOGGER = "shimstats.proxy"
"""The ``logger`` key of the actions' lines: the logger the serving process's lines name too."""


def quote(value: Any) -> str:
    """A logfmt value: bare when it is a plain word, else double-quoted with ``\\``, ``"`` and newlines
    escaped as logrus escapes them (one record, one line)."""
    text = str(value)
    if text and all(c.isalnum() or c in "-._/:@" for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def line(
    created: float, level: str, message: str, fields: Mapping[str, Any], error: str | None = None
) -> str:
    """``time="2024-01-02T03:04:05.678901000Z" level=info msg="…" key=value… [error="…"]``, without the
    newline; ``created`` in seconds since the epoch, ``level`` logrus's name."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    nanos = int((created % 1) * 1e9)
    parts = [f'time="{stamp}.{nanos:09d}Z"', f"level={level}", f"msg={quote(message)}"]
    parts += [f"{key}={quote(value)}" for key, value in fields.items()]
    if error is not None:
        parts.append(f"error={quote(error)}")
    return " ".join(parts)


class ActionLog:
    """A logger for the ``start`` and ``delete`` actions: the lines a logging logger named ``shimstats.proxy``
    with shimstats.proxy.logs' handler would write, in the same order of keys (``fields``, ``logger``, then
    a call's own keys, which replace a field of the same name in its place).

    Nothing is written until ``configure`` names a stream (as a logger without handlers). A stream that
    fails is not retried and never raises: ``start``'s stderr is the address containerd reads.
    """

    def __init__(self, name: str = LOGGER) -> None:
        self.name = name
        self._stream: TextIO | None = None
        self._level = INFO
        self._fields: dict[str, str] = {"runtime": RUNTIME_TYPE}

    def configure(self, stream: TextIO | None, level: int, fields: Mapping[str, str] | None = None) -> None:
        """Write records at ``level`` and above to ``stream`` (None: nowhere), each with ``fields``."""
        self._stream, self._level = stream, level
        self._fields = {"runtime": RUNTIME_TYPE, **(fields or {})}

    def write(self, level: int, message: str, extra: Mapping[str, object], error: str | None = None) -> None:
        """One line at ``level`` (DEBUG ... ERROR) with ``extra`` as keys; ``error``: a traceback's text."""
        if self._stream is None or level < self._level:
            return
        fields = {**self._fields, "logger": self.name, **extra}
        text = line(time.time(), _NAMES[level], message, fields, error)
        try:
            self._stream.write(text + "\n")
            self._stream.flush()
        except (OSError, ValueError):  # containerd closed the fifo, or the stream is closed
            self._stream = None

    def debug(self, message: str, **extra: object) -> None:
        self.write(DEBUG, message, extra)

    def info(self, message: str, **extra: object) -> None:
        self.write(INFO, message, extra)

    def warning(self, message: str, **extra: object) -> None:
        self.write(WARNING, message, extra)

    def error(self, message: str, **extra: object) -> None:
        self.write(ERROR, message, extra)

    def exception(self, message: str, **extra: object) -> None:
        """``error`` with the exception being handled, as logging's ``exception`` writes it."""
        import traceback  # only on this path: a failure of the serving process before it serves

        text = traceback.format_exc()
        self.write(ERROR, message, extra, text[:-1] if text.endswith("\n") else text)


log = ActionLog()
"""The actions' log (shimstats.proxy.cli configures it: the bundle's log fifo for ``start``, stderr for
``delete``)."""


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
