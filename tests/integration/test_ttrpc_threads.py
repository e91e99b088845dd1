"""The threaded ttrpc server (shimstats.ttrpc.threads) over real unix sockets: the asyncio Server's
behaviour (tests/integration/test_ttrpc_socket.py) with calls on threads.

Clients are SyncClient (blocking, one call at a time: concurrency comes from several of them on threads)
and hand-written frames on plain sockets. Every wait is bounded; every server is closed by its test and
must have removed its socket file.
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shimstats._proto.ttrpc.request_pb2 import Response
from shimstats.ttrpc.framing import (
    MAX_MESSAGE,
    Frame,
    FrameDecoder,
    MessageType,
    encode_frame,
    encode_request,
)
from shimstats.ttrpc.server_common import CallContext
from shimstats.ttrpc.status import Code, TtrpcError
from shimstats.ttrpc.sync_client import SyncClient
from shimstats.ttrpc.threads import ThreadServer

SERVICE = "test.v1.Probe"
WAIT = 5.0


@dataclass
class Handlers:
    """The test service. Block waits for ``release``; ``entered`` is set by each Block that started."""

    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def methods(self) -> dict[str, object]:
        return {
            "Echo": lambda payload, ctx: payload,
            "Context": self.context,
            "Block": self.block,
            "Sleep": self.sleep,
            "Fail": self.fail,
            "Status": self.status,
            "Big": lambda payload, ctx: b"x" * int(payload),
        }

    def context(self, payload: bytes, ctx: CallContext) -> bytes:
        remaining = None if ctx.deadline is None else ctx.deadline - time.monotonic()
        fields = {"method": ctx.method, "stream_id": ctx.stream_id, "metadata": ctx.metadata}
        return json.dumps({**fields, "remaining": remaining, "pid": ctx.peer.pid}).encode()

    def block(self, payload: bytes, ctx: CallContext) -> bytes:
        self.entered.release()
        assert self.release.wait(WAIT)
        return payload

    def sleep(self, payload: bytes, ctx: CallContext) -> bytes:
        time.sleep(float(payload))
        return b"slept"

    def fail(self, payload: bytes, ctx: CallContext) -> bytes:
        raise ValueError(f"boom: {payload.decode()}")

    def status(self, payload: bytes, ctx: CallContext) -> bytes:
        raise TtrpcError(Code.NOT_FOUND, f"no {payload.decode()}")


@dataclass
class Served:
    server: ThreadServer
    address: str
    path: Path
    handlers: Handlers

    def client(self) -> SyncClient:
        return SyncClient(self.address, timeout=WAIT)


@contextlib.contextmanager
def serving(sock_dir: Path, **caps: int) -> Iterator[Served]:
    handlers = Handlers()
    server = ThreadServer(**caps)
    server.register(SERVICE, handlers.methods())  # type: ignore[arg-type]
    path = sock_dir / "ttrpc.sock"
    server.start(f"unix://{path}")
    try:
        yield Served(server, f"unix://{path}", path, handlers)
    finally:
        handlers.release.set()
        server.close(grace=2.0)
        assert not path.exists(), "a closed server removes the socket file it made"


@pytest.fixture
def served(sock_dir: Path) -> Iterator[Served]:
    with serving(sock_dir) as s:
        yield s


class Raw:
    """A hand-driven connection: any bytes out, frames in."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def request(self, stream_id: int, method: str, payload: bytes = b"", *, timeout_nano: int = 0) -> None:
        envelope = encode_request(SERVICE, method, payload, timeout_nano=timeout_nano)
        self.sock.sendall(encode_frame(stream_id, MessageType.REQUEST, 0, envelope))

    def response(self) -> tuple[int, Response]:
        while not self.frames:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection instead of answering"
            for event in self.decoder.feed(data):
                assert isinstance(event, Frame)
                self.frames.append(event)
        frame = self.frames.pop(0)
        assert frame.mtype == MessageType.RESPONSE
        return frame.stream_id, Response.FromString(frame.payload)  # read by protobuf: the reference

    def closed_by_peer(self) -> bool:
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True

    def close(self) -> None:
        self.sock.close()


def _code(call: object) -> Code:
    try:
        call()  # type: ignore[operator]
    except TtrpcError as exc:
        return exc.code
    return Code.OK


def test_echo_metadata_and_context(served: Served) -> None:
    with served.client() as client:
        assert client.call(SERVICE, "Echo", b"hello") == b"hello"
        raw = client.call(SERVICE, "Context", b"", timeout=3.0, metadata={"Containerd-Namespace": "k8s.io"})
    seen = json.loads(raw)
    assert seen["method"] == "Context"
    assert seen["metadata"] == {"containerd-namespace": ["k8s.io"]}
    assert 0 < seen["remaining"] <= 3.0
    assert seen["pid"] is not None  # SO_PEERCRED of our own process


def test_statuses_like_the_asyncio_server(served: Served) -> None:
    with served.client() as client:
        with pytest.raises(TtrpcError) as unknown:
            client.call("no.Such", "Thing", b"")
        assert unknown.value.code == Code.UNIMPLEMENTED
        with pytest.raises(TtrpcError) as failed:
            client.call(SERVICE, "Fail", b"x")
        assert (failed.value.code, failed.value.message) == (Code.UNKNOWN, "boom: x")
        with pytest.raises(TtrpcError) as status:
            client.call(SERVICE, "Status", b"y")
        assert (status.value.code, status.value.message) == (Code.NOT_FOUND, "no y")
        with pytest.raises(TtrpcError) as big:
            client.call(SERVICE, "Big", str(MAX_MESSAGE + 1).encode())
        assert big.value.code == Code.RESOURCE_EXHAUSTED
        assert client.call(SERVICE, "Echo", b"still here") == b"still here"


def test_a_blocked_call_holds_up_nobody(served: Served) -> None:
    """A call that waits (Task/Wait) runs on its own thread: others on the same connection are answered."""
    raw = Raw(served.path)
    try:
        raw.request(1, "Block", b"waiting")
        assert served.handlers.entered.acquire(timeout=WAIT)
        for stream_id in (3, 5, 7):
            raw.request(stream_id, "Echo", b"%d" % stream_id)
            assert raw.response()[0] == stream_id
        served.handlers.release.set()
        stream_id, response = raw.response()
        assert (stream_id, response.payload) == (1, b"waiting")
    finally:
        raw.close()


def test_many_callers_at_once(served: Served) -> None:
    def caller(index: int) -> bytes:
        with served.client() as client:
            return client.call(SERVICE, "Echo", b"%d" % index)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(caller, range(64))) == [b"%d" % i for i in range(64)]


def test_deadlines(served: Served) -> None:
    raw = Raw(served.path)
    try:
        raw.request(1, "Sleep", b"0.3", timeout_nano=50_000_000)  # answered, but after its deadline
        stream_id, response = raw.response()
        assert (stream_id, response.status.code) == (1, Code.DEADLINE_EXCEEDED)
        assert "did not finish before the deadline" in response.status.message
        raw.request(3, "Echo", b"in time", timeout_nano=1_000_000_000)
        assert raw.response()[1].payload == b"in time"
    finally:
        raw.close()


def test_stream_id_rules_answer_like_go(served: Served) -> None:
    raw = Raw(served.path)
    try:
        raw.request(2, "Echo", b"even")
        assert raw.response()[1].status.message == "StreamID must be odd for client initiated streams"
        raw.request(5, "Echo", b"five")
        assert raw.response()[1].payload == b"five"
        raw.request(3, "Echo", b"stale")
        assert raw.response()[1].status.message == "StreamID cannot be re-used and must increment"
        raw.sock.sendall(encode_frame(9, MessageType.DATA, 0, b"data"))
        assert raw.response()[1].status.message == "StreamID is no longer active"
        raw.sock.sendall(encode_frame(11, 0x7, 0, b"unknown type"))  # ignored: no answer
        raw.request(13, "Echo", b"thirteen")
        assert raw.response()[0] == 13
    finally:
        raw.close()


def test_a_truncated_frame_closes_only_that_connection(served: Served) -> None:
    with served.client() as client:
        raw = Raw(served.path)
        raw.sock.sendall(encode_frame(1, MessageType.REQUEST, 0, b"x" * 100)[:50])
        raw.sock.shutdown(socket.SHUT_WR)
        assert raw.closed_by_peer()
        raw.close()
        assert client.call(SERVICE, "Echo", b"unaffected") == b"unaffected"


def test_in_flight_cap_per_connection(sock_dir: Path) -> None:
    with serving(sock_dir, max_in_flight=2) as s:
        raw = Raw(s.path)
        try:
            raw.request(1, "Block", b"1")
            raw.request(3, "Block", b"3")
            for _ in range(2):
                assert s.handlers.entered.acquire(timeout=WAIT)
            raw.request(5, "Echo", b"third")
            stream_id, response = raw.response()
            assert (stream_id, response.status.code) == (5, Code.RESOURCE_EXHAUSTED)
            assert "limit 2" in response.status.message
            s.handlers.release.set()
            assert sorted(raw.response()[0] for _ in range(2)) == [1, 3]
            raw.request(7, "Echo", b"room again")
            assert raw.response()[1].payload == b"room again"
        finally:
            raw.close()


def test_connection_cap_and_hung_up_peers(sock_dir: Path) -> None:
    with serving(sock_dir, max_connections=2) as s:
        first, second = s.client(), s.client()
        assert first.call(SERVICE, "Echo", b"one") == b"one"
        assert second.call(SERVICE, "Echo", b"two") == b"two"
        with s.client() as third:
            assert _code(lambda: third.call(SERVICE, "Echo", b"three")) == Code.RESOURCE_EXHAUSTED
        second.close()
        for _ in range(20):  # connects dropped at once: at the cap they are let go, the caller is served
            dropped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            dropped.connect(str(s.path))
            dropped.close()
        with s.client() as behind:
            assert behind.call(SERVICE, "Echo", b"behind") == b"behind"
        assert first.call(SERVICE, "Echo", b"still") == b"still"
        first.close()


def test_graceful_close_lets_running_calls_answer_and_refuses_new_ones(sock_dir: Path) -> None:
    handlers = Handlers()
    server = ThreadServer()
    server.register(SERVICE, handlers.methods())  # type: ignore[arg-type]
    path = sock_dir / "ttrpc.sock"
    server.start(f"unix://{path}")
    raw = Raw(path)
    try:
        raw.request(1, "Block", b"running")
        assert handlers.entered.acquire(timeout=WAIT)
        closing = threading.Thread(target=server.close, kwargs={"grace": WAIT})
        closing.start()
        time.sleep(0.2)
        raw.request(3, "Echo", b"late")
        stream_id, response = raw.response()
        assert (stream_id, response.status.code) == (3, Code.UNAVAILABLE)
        handlers.release.set()
        stream_id, response = raw.response()
        assert (stream_id, response.payload) == (1, b"running")
        assert raw.closed_by_peer()
        closing.join(WAIT)
        assert not closing.is_alive()
        assert not path.exists()
    finally:
        handlers.release.set()
        raw.close()


def test_a_peer_that_does_not_read_is_not_read_either(served: Served) -> None:
    """Requests whose answers pile up unread: the server stops reading that connection (bounded memory),
    and everyone else is served meanwhile."""
    hog = Raw(served.path)
    hog.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        big = str(1 << 20).encode()
        with contextlib.suppress(TimeoutError, BlockingIOError):
            hog.sock.settimeout(1.0)
            for stream_id in range(1, 2001, 2):
                hog.request(stream_id, "Big", big)  # 1 MiB answers never read
        with served.client() as client:
            assert client.call(SERVICE, "Echo", b"served") == b"served"
    finally:
        hog.close()
    with served.client() as client:
        assert client.call(SERVICE, "Echo", b"after") == b"after"


def test_socket_file_mode_and_a_handed_over_socket(sock_dir: Path) -> None:
    with serving(sock_dir) as s:
        assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    handed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = sock_dir / "handed.sock"
    handed.bind(str(path))
    handed.listen(1)
    server = ThreadServer()
    server.register(SERVICE, Handlers().methods())  # type: ignore[arg-type]
    server.start(handed)
    try:
        with SyncClient(f"unix://{path}", timeout=WAIT) as client:
            assert client.call(SERVICE, "Echo", b"handed") == b"handed"
    finally:
        server.close(grace=1.0)
    assert path.exists()  # the file stays the caller's


# -- leader/followers: the thread that read a request runs it and hands the reader role on ----------------


def _send_together(raw: Raw, *requests: tuple[int, str, bytes]) -> None:
    """Several requests in one write, so that the server reads them in one go."""
    frames = [
        encode_frame(stream_id, MessageType.REQUEST, 0, encode_request(SERVICE, method, payload))
        for stream_id, method, payload in requests
    ]
    raw.sock.sendall(b"".join(frames))


def test_the_thread_running_a_call_has_handed_the_reading_on(served: Served) -> None:
    """A Block read alone runs on the thread that read it: the next request is still read and answered."""
    raw = Raw(served.path)
    try:
        raw.request(1, "Block", b"first")
        assert served.handlers.entered.acquire(timeout=WAIT)
        raw.request(3, "Block", b"second")  # read by the thread the role was handed to; it blocks too
        assert served.handlers.entered.acquire(timeout=WAIT)
        raw.request(5, "Echo", b"third")  # and still someone reads
        assert raw.response() == (5, Response(payload=b"third"))
        served.handlers.release.set()
        assert sorted(raw.response()[0] for _ in range(2)) == [1, 3]
    finally:
        raw.close()


@pytest.mark.parametrize("block_first", [True, False])
def test_requests_read_together_run_concurrently(served: Served, block_first: bool) -> None:
    """Requests that arrive in one read: each runs on a thread of its own, whichever the reader ran."""
    raw = Raw(served.path)
    try:
        block, echo = (1, 3) if block_first else (3, 1)
        _send_together(raw, *sorted([(block, "Block", b"blocked"), (echo, "Echo", b"echo")]))
        assert served.handlers.entered.acquire(timeout=WAIT)
        assert raw.response() == (echo, Response(payload=b"echo"))
        raw.request(5, "Echo", b"later")
        assert raw.response() == (5, Response(payload=b"later"))
        served.handlers.release.set()
        assert raw.response() == (block, Response(payload=b"blocked"))
    finally:
        raw.close()


def test_many_calls_on_one_connection_all_run_at_once_and_answer(served: Served) -> None:
    """32 Blocks pipelined on one connection (some read together, some apart) are all running before any
    is released; then every one answers, and so do Echos sent meanwhile."""
    raw = Raw(served.path)
    try:
        streams = list(range(1, 65, 2))
        _send_together(raw, *((s, "Block", b"%d" % s) for s in streams[:16]))
        for stream_id in streams[16:]:
            raw.request(stream_id, "Block", b"%d" % stream_id)
        for _ in streams:
            assert served.handlers.entered.acquire(timeout=WAIT)
        raw.request(101, "Echo", b"meanwhile")
        assert raw.response() == (101, Response(payload=b"meanwhile"))
        served.handlers.release.set()
        answers = dict(raw.response() for _ in streams)
        assert answers == {s: Response(payload=b"%d" % s) for s in streams}
    finally:
        raw.close()


def test_threads_return_to_idle_bounds(sock_dir: Path) -> None:
    """A burst of 16 blocked calls takes 16 threads (the last one's also holds the reader role); once they
    answered and stayed idle past thread_idle, only the readers of open connections remain (one each), and
    a new call is served."""
    handlers = Handlers()
    server = ThreadServer(thread_idle=0.2)
    server.register(SERVICE, handlers.methods())  # type: ignore[arg-type]
    path = sock_dir / "ttrpc.sock"
    server.start(f"unix://{path}")
    raw = Raw(path)
    try:
        for stream_id in range(1, 33, 2):
            raw.request(stream_id, "Block", b"")
        for _ in range(16):
            assert handlers.entered.acquire(timeout=WAIT)
        assert server.thread_count >= 16  # every blocked call on a thread of its own
        handlers.release.set()
        for _ in range(16):
            raw.response()
        deadline = time.monotonic() + WAIT
        while server.thread_count > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.thread_count == 1  # this connection's reader
        raw.request(33, "Echo", b"after")
        assert raw.response() == (33, Response(payload=b"after"))
    finally:
        handlers.release.set()
        raw.close()
        server.close(grace=2.0)
