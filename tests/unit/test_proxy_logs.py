"""Proxy log lines: logfmt shaped like containerd's own, and the bundle's log fifo."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
from pathlib import Path

from shimstats.proxy import RUNTIME_TYPE
from shimstats.proxy.logs import LogfmtFormatter, configure, open_log_fifo


def _record(msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("shimstats.proxy", level, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def _fields(line: str) -> dict[str, str]:
    """Parse one logfmt line back (shlex handles the double quotes and backslash escapes)."""
    return dict(token.split("=", 1) for token in shlex.split(line))


def test_a_line_has_containerds_keys_then_ours() -> None:
    line = LogfmtFormatter({"id": "c1"}).format(
        _record('agent "down": %s', container="abc", code="UNAVAILABLE")
    )
    assert re.match(r'time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z" level=warning msg=', line)
    fields = _fields(line)
    assert fields["msg"] == 'agent "down": %s'
    assert fields["runtime"] == RUNTIME_TYPE
    assert (fields["id"], fields["container"], fields["code"]) == ("c1", "abc", "UNAVAILABLE")
    assert fields["logger"] == "shimstats.proxy"


def test_values_with_spaces_quotes_and_newlines_stay_on_one_line() -> None:
    line = LogfmtFormatter().format(_record("two\nlines", address='unix:///a b"c'))
    assert "\n" not in line
    fields = _fields(line)
    assert fields["address"] == 'unix:///a b"c'
    assert fields["msg"] == "two\\nlines"  # logrus escapes newlines the same way


def test_levels_use_logrus_names() -> None:
    formatter = LogfmtFormatter()
    assert "level=info" in formatter.format(_record("x", logging.INFO))
    assert "level=error" in formatter.format(_record("x", logging.ERROR))


def test_configure_sends_records_at_the_level(tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure(stream, logging.WARNING, {"namespace": "k8s.io"})
        logging.getLogger("shimstats.proxy").info("hidden")
        logging.getLogger("shimstats.proxy").warning("shown")
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert _fields(lines[0])["namespace"] == "k8s.io"


def test_log_fifo_only_when_someone_reads_it(tmp_path: Path) -> None:
    assert open_log_fifo(str(tmp_path)) is None  # no log file at all
    fifo = tmp_path / "log"
    os.mkfifo(fifo)
    assert open_log_fifo(str(tmp_path)) is None  # a fifo nobody reads: refused at once, never a hang
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # containerd keeps the read end open
    try:
        fd = open_log_fifo(str(tmp_path))
        assert fd is not None
        os.write(fd, b"hello\n")
        os.close(fd)
        assert os.read(reader, 100) == b"hello\n"
    finally:
        os.close(reader)
