"""The proxy's serving process as a fork of ``start``, begun before start knows what it will serve.

containerd's first call to a new shim (Create) waits until the serving process accepts it, and that process's
imports (the threaded ttrpc server, protobuf) were the longest part of a container start through the proxy.
So ``start`` forks as soon as it has read its flags: the child detaches and imports the server while the
parent runs the inner shim's ``start`` and binds our socket; then the parent hands the child that socket
and the settings over a socket pair (the fd as SCM_RIGHTS, the rest as JSON). A start that ends with no
server to run (the inner shim grouped this container with a running one, or start failed) closes the pair,
and the child leaves quietly.

Forking is safe here: ``start`` runs no thread of its own, and the child never returns into start's code (it
leaves with ``os._exit``). The child takes its stdio off containerd's pipes at once (containerd reads start's
output until no process holds them), logs to the bundle's log fifo, and shows as its process title the
``serve`` command line that would run it by hand.
"""

from __future__ import annotations

import _socket
import json
import os

from shimstats.proxy.logfmt import log, open_log_fifo
from shimstats.proxy.settings import DaemonSettings

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is for type checkers only here (start loads this module)
    from typing import NoReturn

# _socket, the C module under socket: importing socket (its enums) costs ~13M instructions, which
# containerd would wait for; the child loads it with its server.

__all__ = ["SHARED_IMPORTS", "ForkError", "ServerChild"]

SHARED_IMPORTS = ("contextlib", "selectors", "signal", "string", "threading", "typing")
"""What both sides of the fork load after it: start (with subprocess and the TOML parser) and the serving
child (with its server). Loaded once, just before the fork, instead of on both sides while they compete for
the CPUs (about 30M instructions, docs/benchmarks.md). Not at import: ``delete`` and a start that joins a
group fork nothing (tests/unit/test_proxy_launch.py checks the list against both sides). Not datetime and
locale, which only protobuf loaded in the child, before its envelope was read without it."""
HANDOVER_MAX = 64 * 1024
"""Bytes of settings a child accepts (a few hundred in practice: addresses and paths)."""


class ForkError(OSError):
    """The serving process cannot be started; the message is what containerd should show."""


class ServerChild:
    """A forked serving process, importing its server, until ``hand_over`` or ``cancel``.

    ``fields`` are the log fields of every line it writes (the container id and namespace); its own pid is
    added. ``debug`` is containerd's ``-debug``.
    """

    def __init__(self, bundle: str, fields: dict[str, str], *, debug: bool) -> None:
        _load_shared_imports()
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)  # a message stays whole
        log_fd = open_log_fifo(bundle)
        try:
            pid = os.fork()  # the project's one fork (tests/integration/test_hostile_security.py)
        except OSError as exc:
            for sock in (ours, theirs):
                sock.close()
            _close(log_fd)
            raise ForkError(f"cannot start the proxy's server: {exc.strerror or exc}") from None
        if pid == 0:
            ours.close()
            _child(theirs, log_fd, fields, debug)
        theirs.close()
        _close(log_fd)
        self.pid = pid
        self._channel = ours

    def hand_over(self, title: str, settings: DaemonSettings) -> bool:
        """Send the child its listening socket (``settings.listen_fd``), settings and process title; False
        when the child is gone (it failed before it could take them)."""
        import array  # here: a start that joins a group hands nothing over

        message = json.dumps({"title": title, "settings": settings._asdict()}).encode()
        rights = (_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [settings.listen_fd]))
        try:
            self._channel.sendmsg([message], [rights])  # what socket.send_fds sends
        except OSError:
            return False
        finally:
            self._channel.close()
        return True

    def cancel(self) -> None:
        """No server to run after all: the child sees the pair close and exits 0. Idempotent, and a no-op
        after ``hand_over``."""
        self._channel.close()


def _load_shared_imports() -> None:
    """SHARED_IMPORTS, imported here."""
    import contextlib  # noqa: F401
    import selectors  # noqa: F401
    import signal  # noqa: F401
    import string  # noqa: F401
    import threading  # noqa: F401
    import typing  # noqa: F401


def _child(channel: _socket.socket, log_fd: int | None, fields: dict[str, str], debug: bool) -> NoReturn:
    """The serving process: detach, import the server, wait for the hand-over, serve, exit."""
    status = 0
    try:
        _detach(log_fd)
        from setproctitle import setproctitle

        from shimstats.proxy.serving import run_server  # the imports start no longer waits for

        handed = _receive(channel)
        if handed is not None:
            title, settings = handed
            setproctitle(title)
            fields = {**fields, "pid": str(os.getpid())}
            status = run_server(settings, debug=debug, fields=fields, ready=lambda: None)
    except BaseException:  # nothing may return into start's code
        status = 1
        log.exception("the serving process failed")
    finally:
        os._exit(status)


def _detach(log_fd: int | None) -> None:
    """A session of its own (out of containerd's process group, as its own shims), stdio off containerd's
    pipes (stderr to the bundle's log fifo, when containerd reads one), and never the bundle as cwd (which
    containerd removes)."""
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(null if log_fd is None else log_fd, 2)
    for fd in (null, log_fd):
        if fd is not None and fd > 2:
            os.close(fd)


def _receive(pair_end: _socket.socket) -> tuple[str, DaemonSettings] | None:
    """The title and settings the parent sent, with the socket it bound; None when it closed the pair."""
    import socket  # loaded with the server by now

    channel = socket.socket(fileno=pair_end.detach())
    try:
        message, fds, _, _ = socket.recv_fds(channel, HANDOVER_MAX, 1)
    finally:
        channel.close()
    if not message or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    data = json.loads(message)
    settings = DaemonSettings(**data["settings"])._replace(listen_fd=fds[0])
    words = str(data["title"]).split(" ")
    if "--listen-fd" in words[:-1]:  # the socket's number here, not in start
        words[words.index("--listen-fd") + 1] = str(fds[0])
    return " ".join(words), settings


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
