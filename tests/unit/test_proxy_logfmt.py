"""The actions' log (shimstats.proxy.logfmt.ActionLog) writes, without the logging module, exactly the lines
the logging-based formatter of the serving process writes (shimstats.proxy.logs.LogfmtFormatter), which
tests/unit/test_proxy_logs.py checks against containerd's logrus shape."""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest

from shimstats.proxy.logfmt import DEBUG, ERROR, INFO, WARNING, ActionLog
from shimstats.proxy.logs import LogfmtFormatter

CREATED = 1733456789.123456
FIELDS = {"id": "c1", "namespace": "k8s.io", "pid": "4242"}
MESSAGES = [
    "started",
    "start failed: the inner shim's start printed 'x', not a unix:// address",
    'say "hi"',
    "two\nlines",
    "back\\slash",
    "",
    "naïve ünïcode",
    "a=b c",
]


def _by_logging(level: int, message: str, extra: dict[str, object], exc: bool = False) -> str:
    """The line the logging module, with the proxy's formatter, writes for this record at CREATED."""
    logger = logging.getLogger("shimstats.proxy")
    exc_info = sys.exc_info() if exc else None
    record = logger.makeRecord(logger.name, level, __file__, 1, message, (), exc_info, extra=extra)
    record.created = CREATED
    return LogfmtFormatter(FIELDS).format(record)


def _by_action_log(
    monkeypatch: pytest.MonkeyPatch, write: str, message: str, extra: dict[str, object]
) -> str:
    stream = io.StringIO()
    log = ActionLog()
    log.configure(stream, DEBUG, FIELDS)
    monkeypatch.setattr(time, "time", lambda: CREATED)
    getattr(log, write)(message, **extra)
    monkeypatch.undo()
    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1  # one record, one line
    return text[:-1]


@pytest.mark.parametrize("message", MESSAGES)
@pytest.mark.parametrize(
    ("write", "level"), [("debug", DEBUG), ("info", INFO), ("warning", WARNING), ("error", ERROR)]
)
def test_each_level_and_message_gives_the_logging_formatters_line(
    monkeypatch: pytest.MonkeyPatch, write: str, level: int, message: str
) -> None:
    extra: dict[str, object] = {"address": 'unix:///a b"c', "inner": "unix:///run/x.sock", "count": 3}
    assert _by_action_log(monkeypatch, write, message, extra) == _by_logging(level, message, extra)


def test_a_calls_keys_replace_a_field_in_its_place_as_logging_extras_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra: dict[str, object] = {"id": "other", "namespace": "default", "address": "unix:///x", "inner": "y z"}
    line = _by_action_log(monkeypatch, "info", "started", extra)
    assert line == _by_logging(INFO, "started", extra)
    assert " id=other namespace=default pid=4242 logger=shimstats.proxy address=unix:///x " in line


def test_exception_carries_the_traceback_as_logging_does(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    log = ActionLog()
    log.configure(stream, INFO, FIELDS)
    try:
        raise ModuleNotFoundError("No module named 'setproctitle'")
    except ModuleNotFoundError:
        monkeypatch.setattr(time, "time", lambda: CREATED)
        log.exception("the serving process failed")
        monkeypatch.undo()
        expected = _by_logging(ERROR, "the serving process failed", {}, exc=True)
    assert stream.getvalue() == expected + "\n"
    assert 'error="Traceback (most recent call last):\\n' in expected


def test_below_the_level_and_before_configure_nothing_is_written() -> None:
    ActionLog().error("nowhere to go")  # a logger without handlers: no output, no error
    stream = io.StringIO()
    log = ActionLog()
    log.configure(stream, WARNING, FIELDS)
    log.debug("hidden")
    log.info("hidden")
    log.warning("shown")
    assert [line.split(" ")[1] for line in stream.getvalue().splitlines()] == ["level=warning"]


def test_a_stream_that_fails_never_raises_and_is_dropped() -> None:
    class Closed(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            Closed.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

    log = ActionLog()
    log.configure(Closed(), INFO, FIELDS)
    log.error("containerd went away")
    log.error("again")
    assert Closed.writes == 1
