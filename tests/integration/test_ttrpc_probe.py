"""shimstats.ttrpc.probe.listening on real unix sockets: the one question asked before a socket file is
replaced (listen, the proxy's start and delete) and while a server comes up (demo, guest-test)."""

from __future__ import annotations

import socket
from pathlib import Path

from shimstats.ttrpc.probe import listening


def test_a_listening_socket_listens(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(8)
        assert listening(str(path))


def test_a_socket_whose_server_is_gone_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(8)
    assert path.exists()  # the file outlives its listener
    assert not listening(str(path))


def test_no_file_and_a_regular_file_are_not_listening(tmp_path: Path) -> None:
    assert not listening(str(tmp_path / "missing.sock"))
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    assert not listening(str(plain))


def test_a_full_accept_queue_is_busy_not_gone(tmp_path: Path) -> None:
    """A server that does not accept, with its queue full, still listens: its file must not be replaced."""
    path = tmp_path / "a.sock"
    queued: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(0)
        try:
            while True:  # fill the queue: the next connect would block
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    client.close()
                    break
                queued.append(client)
                assert len(queued) < 1000
            assert listening(str(path), timeout=0.2)
        finally:
            for client in queued:
                client.close()
