"""Logging for the agent: one line per record, as text for people or JSON for log collectors.

The extra fields a log call passes (``container_id``, ``cgroup_path``, ``code``, ``address``...) are kept in
both formats, so an error line always says which container and path it is about.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
"""What every LogRecord carries; anything else on a record came from a call's ``extra=`` (the proxy's
logfmt lines use it too)."""


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Every field a log call passed with ``extra=`` (container_id, namespace, address...), in call order."""
    return {name: value for name, value in vars(record).items() if name not in STANDARD_ATTRIBUTES}


class TextFormatter(logging.Formatter):
    """``2024-01-02T03:04:05.678Z WARNING guest_agent: message container_id='abc' cgroup_path='/x'``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={v!r}" for k, v in extra_fields(record).items())
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, the extra fields, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(extra_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr by default) in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
