"""shimstats.ttrpc over real sockets: our client and server, raw frames, a fake VMM muxer, vsock.

Every socket lives in a fresh directory under /tmp (unix socket paths must stay under 108 bytes) that is
removed afterwards; servers are closed in the test that made them, and a closed server must have removed
its socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf.any_pb2 import Any

from shimstats._proto.ttrpc.request_pb2 import Response
from shimstats.ttrpc import (
    MAX_MESSAGE,
    CallContext,
    Client,
    Code,
    Frame,
    FrameDecoder,
    MessageType,
    Server,
    SyncClient,
    TransportError,
    TtrpcError,
    encode_frame,
)
from shimstats.ttrpc.framing import decode_request, encode_request, encode_response
from tests.kata_standins import HybridVsockMuxer

SERVICE = "test.v1.Probe"
T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float = 5.0) -> T:
    """Every wait in these tests is bounded: a hang is a failure, not a stuck run."""
    return await asyncio.wait_for(aw, seconds)


@pytest.fixture(autouse=True)
def _time_limit() -> Iterator[None]:
    """A hung test fails after 30 s instead of stalling the run (the alarm interrupts the event loop)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("ttrpc test still running after 30 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Handlers:
    """The test service. Calls to Block wait for ``release``; ``entered`` counts calls that started."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cancelled: list[str] = field(default_factory=list)

    def methods(self) -> dict[str, object]:
        return {
            "Echo": self.echo,
            "Shuffle": self.shuffle,
            "Metadata": self.metadata,
            "Context": self.context,
            "Sleep": self.sleep,
            "Block": self.block,
            "Fail": self.fail,
            "Status": self.status,
            "Big": self.big,
            "PlainEcho": self.plain_echo,
            "PlainMetadata": self.plain_metadata,
            "PlainFail": self.plain_fail,
            "PlainStatus": self.plain_status,
        }

    async def echo(self, payload: bytes, ctx: CallContext) -> bytes:
        return payload

    async def shuffle(self, payload: bytes, ctx: CallContext) -> bytes:
        # Yield a payload-dependent number of times so answers complete out of order.
        for _ in range(int(payload) % 7):
            await asyncio.sleep(0)
        return payload

    async def metadata(self, payload: bytes, ctx: CallContext) -> bytes:
        return json.dumps(ctx.metadata, sort_keys=True).encode()

    async def context(self, payload: bytes, ctx: CallContext) -> bytes:
        now = asyncio.get_running_loop().time()
        return json.dumps(
            {
                "service": ctx.service,
                "method": ctx.method,
                "stream_id": ctx.stream_id,
                "remaining": None if ctx.deadline is None else ctx.deadline - now,
                "peer": [ctx.peer.address, ctx.peer.pid, ctx.peer.uid, ctx.peer.gid],
            }
        ).encode()

    async def sleep(self, payload: bytes, ctx: CallContext) -> bytes:
        try:
            await asyncio.sleep(float(payload))
        except asyncio.CancelledError:
            self.cancelled.append("Sleep")
            raise
        return b"slept"

    async def block(self, payload: bytes, ctx: CallContext) -> bytes:
        self.entered.put_nowait(payload.decode())
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(payload.decode())
            raise
        return payload

    async def fail(self, payload: bytes, ctx: CallContext) -> bytes:
        raise ValueError(f"boom: {payload.decode()}")

    async def status(self, payload: bytes, ctx: CallContext) -> bytes:
        raise TtrpcError(Code.NOT_FOUND, f"no {payload.decode()}", [Any(type_url="t/x", value=payload)])

    async def big(self, payload: bytes, ctx: CallContext) -> bytes:
        return b"x" * int(payload)

    # Plain functions: the server calls them inline, without a task (the guest agent's handlers are these).

    def plain_echo(self, payload: bytes, ctx: CallContext) -> bytes:
        return payload

    def plain_metadata(self, payload: bytes, ctx: CallContext) -> bytes:
        return json.dumps([ctx.method, ctx.stream_id, ctx.metadata], sort_keys=True).encode()

    def plain_fail(self, payload: bytes, ctx: CallContext) -> bytes:
        raise ValueError(f"plain boom: {payload.decode()}")

    def plain_status(self, payload: bytes, ctx: CallContext) -> bytes:
        raise TtrpcError(Code.NOT_FOUND, f"no plain {payload.decode()}")


@dataclass
class Served:
    server: Server
    address: str
    path: Path
    handlers: Handlers


@contextlib.asynccontextmanager
async def serving(sock_dir: Path, name: str = "ttrpc.sock", **caps: int) -> AsyncIterator[Served]:
    handlers = Handlers()
    server = Server(**caps)
    server.register(SERVICE, handlers.methods())  # type: ignore[arg-type]
    path = sock_dir / name
    address = f"unix://{path}"
    await server.start(address)
    try:
        yield Served(server, address, path, handlers)
    finally:
        handlers.release.set()
        await within(server.close(grace=2.0))
        assert not path.exists(), "a closed server removes its socket file"


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[Served]:
    async with serving(sock_dir) as s:
        yield s


@pytest.fixture
async def client(served: Served) -> AsyncIterator[Client]:
    c = await Client.connect(served.address, timeout=2.0)
    try:
        yield c
    finally:
        await within(c.close())


class RawConn:
    """A hand-driven connection: write any bytes, read frames one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    @classmethod
    async def open(cls, path: Path) -> RawConn:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def request(self, stream_id: int, method: str, payload: bytes = b"", *, timeout_nano: int = 0) -> None:
        envelope = encode_request(SERVICE, method, payload, timeout_nano=timeout_nano)
        self.send(encode_frame(stream_id, MessageType.REQUEST, 0, envelope))

    async def frame(self, timeout: float = 5.0) -> Frame:
        while not self.frames:
            data = await within(self.reader.read(65536), timeout)
            assert data, "the server closed the connection instead of answering"
            for event in self.decoder.feed(data):
                assert isinstance(event, Frame)
                self.frames.append(event)
        return self.frames.pop(0)

    async def response(self, timeout: float = 5.0) -> tuple[int, Response]:
        frame = await self.frame(timeout)
        assert frame.mtype == MessageType.RESPONSE
        assert frame.flags == 0
        return frame.stream_id, Response.FromString(frame.payload)  # read by protobuf: the reference

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        while True:
            data = await within(self.reader.read(65536), timeout)
            if not data:
                return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def raw(served: Served) -> AsyncIterator[RawConn]:
    conn = await RawConn.open(served.path)
    try:
        yield conn
    finally:
        await conn.close()


def status_of(response: Response) -> tuple[int, str]:
    return response.status.code, response.status.message


# -- calls ---------------------------------------------------------------------------------------------------


async def test_unary_echo(client: Client) -> None:
    assert await client.call(SERVICE, "Echo", b"hello") == b"hello"
    assert await client.call(SERVICE, "Echo", b"") == b""
    payload = bytes(range(256)) * 4096  # 1 MiB, many reads each way
    assert await client.call(SERVICE, "Echo", payload, timeout=5) == payload


async def test_metadata_reaches_the_handler_with_lowercased_keys(client: Client) -> None:
    seen = await client.call(
        SERVICE, "Metadata", b"", metadata={"Containerd-Namespace-TTRPC": "k8s.io", "multi": ["a", "b"]}
    )
    assert json.loads(seen) == {"containerd-namespace-ttrpc": ["k8s.io"], "multi": ["a", "b"]}


async def test_context_names_the_call_and_the_peer(client: Client, served: Served) -> None:
    first = json.loads(await client.call(SERVICE, "Context", b""))
    assert first["service"] == SERVICE
    assert first["method"] == "Context"
    assert first["remaining"] is None
    # SO_PEERCRED: the kernel's word for who connected (this process).
    assert first["peer"] == [served.address, os.getpid(), os.getuid(), os.getgid()]
    second = json.loads(await client.call(SERVICE, "Context", b"", timeout=2.0))
    assert second["stream_id"] == first["stream_id"] + 2  # odd ids, increasing by two
    assert first["stream_id"] % 2 == 1
    assert 0 < second["remaining"] <= 2.0  # timeout_nano arrived and became a deadline


async def test_a_thousand_concurrent_calls_on_one_connection(client: Client) -> None:
    payloads = [str(i).encode() for i in range(1000)]
    results = await within(asyncio.gather(*(client.call(SERVICE, "Shuffle", p) for p in payloads)), 20)
    assert results == payloads


# -- deadlines and cancellation ------------------------------------------------------------------------------


async def test_server_honours_timeout_nano(served: Served, raw: RawConn) -> None:
    started = time.monotonic()
    raw.request(1, "Sleep", b"30", timeout_nano=100_000_000)
    stream_id, response = await raw.response()
    assert stream_id == 1
    assert response.status.code == Code.DEADLINE_EXCEEDED
    assert 0.1 <= time.monotonic() - started < 3
    assert served.handlers.cancelled == ["Sleep"]  # the handler was stopped, not left running
    # A negative timeout_nano is a deadline already past: answered without running the handler.
    raw.request(3, "Sleep", b"30", timeout_nano=-1)
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code) == (3, Code.DEADLINE_EXCEEDED)
    assert served.handlers.cancelled == ["Sleep"]


async def test_server_deadline_error_from_our_client(client: Client, served: Served) -> None:
    with pytest.raises(TtrpcError) as caught:
        await within(client.call(SERVICE, "Sleep", b"30", timeout=0.1))
    assert caught.value.code == Code.DEADLINE_EXCEEDED
    assert await client.call(SERVICE, "Echo", b"after") == b"after"


async def _two_requests(reader: asyncio.StreamReader) -> list[Frame]:
    """Read until two request frames have arrived (fewer if the peer hangs up first)."""
    decoder = FrameDecoder()
    requests: list[Frame] = []
    while len(requests) < 2:
        data = await reader.read(65536)
        if not data:
            break
        requests.extend(e for e in decoder.feed(data) if isinstance(e, Frame))
    return requests


async def test_client_deadline_when_the_server_never_answers_and_a_late_answer_is_ignored(
    sock_dir: Path,
) -> None:
    path = sock_dir / "late.sock"
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Holds the first request until the second arrives, then answers both: the first one late.
        requests = await _two_requests(reader)
        if len(requests) < 2:
            return
        for r in requests:
            seen.append(r.stream_id)
            echo = Response(payload=decode_request(r.payload).payload).SerializeToString()
            writer.write(encode_frame(r.stream_id, MessageType.RESPONSE, 0, echo))
        await reader.read()  # until the client goes
        writer.close()

    listener = await asyncio.start_unix_server(handle, str(path))
    try:
        async with await Client.connect(f"unix://{path}") as c:
            started = time.monotonic()
            with pytest.raises(TtrpcError) as caught:
                await within(c.call(SERVICE, "Echo", b"first", timeout=0.2))
            assert caught.value.code == Code.DEADLINE_EXCEEDED
            assert str(path) in caught.value.message
            assert 0.2 <= time.monotonic() - started < 2
            assert not c.closed
            # Stream 1's answer now arrives after its deadline: it must not be taken for stream 3's.
            assert await within(c.call(SERVICE, "Echo", b"second")) == b"second"
            assert seen == [1, 3]
    finally:
        listener.close()
        await listener.wait_closed()


async def test_a_deadline_passing_on_a_stream_stuck_mid_frame_closes_the_connection(sock_dir: Path) -> None:
    """A peer that sent a header and then only part of its body: nothing behind it can arrive, so the
    expiring call takes the connection down and the call waiting behind it fails at once, UNAVAILABLE."""
    path = sock_dir / "stuck.sock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = await _two_requests(reader)
        if len(requests) < 2:
            return
        writer.write(encode_frame(requests[0].stream_id, MessageType.RESPONSE, 0, b"\x00" * 100)[:50])
        await reader.read()  # until the client goes
        writer.close()

    listener = await asyncio.start_unix_server(handle, str(path))
    try:
        async with await Client.connect(f"unix://{path}") as c:
            behind = asyncio.create_task(c.call(SERVICE, "Echo", b"behind", timeout=30.0))
            with pytest.raises(TtrpcError) as expired:
                await within(c.call(SERVICE, "Echo", b"first", timeout=0.3))
            with pytest.raises(TtrpcError) as lost:
                await within(behind)
    finally:
        listener.close()
        await listener.wait_closed()
    assert expired.value.code == Code.DEADLINE_EXCEEDED
    assert lost.value.code == Code.UNAVAILABLE
    assert "stuck inside a frame" in lost.value.message
    assert c.closed


async def test_cancelling_a_call_cleans_up_its_stream(client: Client, served: Served) -> None:
    call = asyncio.create_task(client.call(SERVICE, "Block", b"cancel-me"))
    assert await within(served.handlers.entered.get()) == "cancel-me"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # The server still answers the abandoned stream once released; the client drops that answer.
    served.handlers.release.set()
    assert await within(client.call(SERVICE, "Echo", b"next")) == b"next"
    assert await within(client.call(SERVICE, "Block", b"again")) == b"again"
    assert not client.closed


# -- statuses ------------------------------------------------------------------------------------------------


async def test_unknown_service_and_method_are_unimplemented(client: Client) -> None:
    with pytest.raises(TtrpcError) as caught:
        await client.call("nope.Svc", "Echo", b"")
    assert (caught.value.code, caught.value.message) == (Code.UNIMPLEMENTED, "service nope.Svc")
    with pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "Nope", b"")
    assert (caught.value.code, caught.value.message) == (Code.UNIMPLEMENTED, "method Nope")


async def test_handler_exception_is_unknown_and_the_server_lives_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="shimstats.ttrpc"), pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "Fail", b"x1")
    assert (caught.value.code, caught.value.message) == (Code.UNKNOWN, "boom: x1")
    assert any("Fail" in r.getMessage() and r.exc_info for r in caplog.records)
    assert await client.call(SERVICE, "Echo", b"alive") == b"alive"


async def test_raised_ttrpc_error_is_sent_as_its_status(client: Client) -> None:
    with pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "Status", b"thing")
    assert caught.value.code == Code.NOT_FOUND
    assert caught.value.message == "no thing"
    assert [(d.type_url, d.value) for d in caught.value.details] == [("t/x", b"thing")]
    assert str(caught.value) == "NOT_FOUND: no thing"


async def test_plain_function_handlers_answer_like_coroutines(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    assert await client.call(SERVICE, "PlainEcho", b"now") == b"now"
    answer = await client.call(SERVICE, "PlainMetadata", b"", metadata={"Key": ["a", "b"]}, timeout=5.0)
    method, stream_id, metadata = json.loads(answer)
    assert (method, metadata) == ("PlainMetadata", {"key": ["a", "b"]})
    assert stream_id % 2 == 1
    with pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "PlainStatus", b"thing")
    assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "no plain thing")
    with caplog.at_level(logging.ERROR, logger="shimstats.ttrpc"), pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "PlainFail", b"x2")
    assert (caught.value.code, caught.value.message) == (Code.UNKNOWN, "plain boom: x2")
    assert any("PlainFail" in r.getMessage() and r.exc_info for r in caplog.records)
    payloads = [str(i).encode() for i in range(200)]
    answers = await asyncio.gather(*(client.call(SERVICE, "PlainEcho", p) for p in payloads))
    assert answers == payloads


async def test_plain_handler_past_its_deadline_is_not_run(served: Served, raw: RawConn) -> None:
    raw.request(1, "PlainStatus", b"never", timeout_nano=-1)
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code) == (1, Code.DEADLINE_EXCEEDED)
    raw.request(3, "PlainEcho", b"in time", timeout_nano=10**9)
    assert await raw.response() == (3, Response(payload=b"in time"))


async def test_draining_connection_closes_after_its_last_plain_call(sock_dir: Path) -> None:
    async with serving(sock_dir) as s:
        raw = await RawConn.open(s.path)
        try:
            raw.request(1, "Block", b"held")
            assert await within(s.handlers.entered.get()) == "held"
            closing = asyncio.create_task(s.server.close(grace=5.0))
            await asyncio.sleep(0.05)
            raw.request(3, "PlainEcho", b"refused")
            stream_id, response = await raw.response()
            assert (stream_id, response.status.code) == (3, Code.UNAVAILABLE)
            s.handlers.release.set()
            assert await raw.response() == (1, Response(payload=b"held"))
            await within(closing)
            assert await raw.closed_by_peer()
        finally:
            await raw.close()


async def test_stream_id_rules_answer_like_go(raw: RawConn) -> None:
    raw.request(2, "Echo", b"even")
    assert await raw.response() == (
        2,
        Response(
            status={
                "code": Code.INVALID_ARGUMENT,
                "message": "StreamID must be odd for client initiated streams",
            }
        ),
    )
    raw.request(5, "Echo", b"five")
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code, response.payload) == (5, Code.OK, b"five")
    reused = (Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
    for stale in (5, 3):
        raw.request(stale, "Echo", b"stale")
        stream_id, response = await raw.response()
        assert (stream_id, *status_of(response)) == (stale, *reused)
    raw.send(encode_frame(9, MessageType.DATA, 0, b"data"))
    stream_id, response = await raw.response()
    assert (stream_id, *status_of(response)) == (9, Code.INVALID_ARGUMENT, "StreamID is no longer active")
    raw.send(encode_frame(11, MessageType.REQUEST, 0, b"\x0a\x05ab"))  # field 1 claims 5 bytes, has 2
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code) == (11, Code.INVALID_ARGUMENT)
    assert "undecodable" in response.status.message
    raw.send(encode_frame(13, 0x7, 0, b"unknown type"))  # ignored: no answer at all
    raw.request(15, "Echo", b"fifteen")
    stream_id, response = await raw.response()
    assert (stream_id, response.payload) == (15, b"fifteen")


# -- malformed peers -----------------------------------------------------------------------------------------


async def test_garbage_gets_resource_exhausted_and_other_clients_are_unaffected(
    served: Served, client: Client
) -> None:
    garbage = b"GET / HTTP/1.1\r\nHost: shim\r\n\r\n"
    bad = await RawConn.open(served.path)
    try:
        bad.send(garbage)
        # Read as a header: the length is huge (over 4 MiB), the stream id is bytes 4..7.
        stream_id, response = await bad.response()
        assert stream_id == struct.unpack(">I", garbage[4:8])[0]
        assert response.status.code == Code.RESOURCE_EXHAUSTED
        assert await client.call(SERVICE, "Echo", b"fine") == b"fine"
    finally:
        await bad.close()
    assert await client.call(SERVICE, "Echo", b"still fine") == b"still fine"


async def test_oversized_frame_is_refused_and_the_connection_kept(raw: RawConn) -> None:
    length = MAX_MESSAGE + 1
    raw.send(struct.pack(">IIBB", length, 1, MessageType.REQUEST, 0) + b"\0" * length)
    raw.request(3, "Echo", b"after the big one")
    stream_id, response = await raw.response()
    assert (stream_id, response.status.code) == (1, Code.RESOURCE_EXHAUSTED)
    assert str(length) in response.status.message
    stream_id, response = await raw.response()
    assert (stream_id, response.payload) == (3, b"after the big one")


async def test_truncated_frame_closes_only_that_connection(
    served: Served, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await RawConn.open(served.path)
    try:
        with caplog.at_level(logging.WARNING, logger="shimstats.ttrpc"):
            bad.send(struct.pack(">IIBB", 100, 1, MessageType.REQUEST, 0) + b"only ten b")
            bad.writer.write_eof()
            assert await bad.closed_by_peer()
            for _ in range(100):
                if any("truncated frame" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
        assert any("truncated frame" in r.getMessage() for r in caplog.records)
    finally:
        await bad.close()
    assert await client.call(SERVICE, "Echo", b"unaffected") == b"unaffected"


async def test_too_big_response_becomes_resource_exhausted(client: Client) -> None:
    with pytest.raises(TtrpcError) as caught:
        await within(client.call(SERVICE, "Big", str(MAX_MESSAGE).encode()))
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert "response of" in caught.value.message
    assert await client.call(SERVICE, "Big", b"3") == b"xxx"


async def test_too_big_request_fails_locally_and_keeps_the_connection(client: Client) -> None:
    with pytest.raises(TtrpcError) as caught:
        await client.call(SERVICE, "Echo", b"\0" * MAX_MESSAGE)  # the envelope adds a few bytes: over
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert await client.call(SERVICE, "Echo", b"small") == b"small"


# -- connection loss, close, caps ----------------------------------------------------------------------------


async def test_connection_loss_fails_every_pending_call_at_once(sock_dir: Path) -> None:
    path = sock_dir / "drop.sock"
    calls = 5

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        received = 0
        while received < calls:  # take every request, answer none, then hang up
            data = await reader.read(65536)
            if not data:
                break
            received += len(decoder.feed(data))
        writer.close()

    listener = await asyncio.start_unix_server(handle, str(path))
    try:
        c = await Client.connect(f"unix://{path}")
        results = await within(
            asyncio.gather(
                *(c.call(SERVICE, "Echo", b"%d" % i) for i in range(calls)), return_exceptions=True
            )
        )
        assert all(isinstance(r, TtrpcError) and r.code == Code.UNAVAILABLE for r in results), results
        assert all(f"unix://{path}" in str(r) for r in results)
        assert c.closed
        with pytest.raises(TtrpcError) as caught:
            await c.call(SERVICE, "Echo", b"later")
        assert caught.value.code == Code.UNAVAILABLE
        await within(c.close())
    finally:
        listener.close()
        await listener.wait_closed()


async def test_graceful_close_lets_running_calls_finish(sock_dir: Path) -> None:
    async with serving(sock_dir) as s:
        c = await Client.connect(s.address)
        raw = await RawConn.open(s.path)
        try:
            running = asyncio.create_task(c.call(SERVICE, "Block", b"in-flight"))
            raw.request(1, "Block", b"raw")
            assert sorted([await within(s.handlers.entered.get()) for _ in range(2)]) == ["in-flight", "raw"]
            closing = asyncio.create_task(s.server.close(grace=5.0))
            await asyncio.sleep(0.05)
            assert not closing.done()
            raw.request(3, "Echo", b"too late")  # a new request on a draining connection
            stream_id, response = await raw.response()
            assert (stream_id, response.status.code) == (3, Code.UNAVAILABLE)
            with pytest.raises(TransportError):
                await Client.connect(s.address, timeout=1.0)  # no longer accepting
            s.handlers.release.set()
            assert await within(running) == b"in-flight"
            stream_id, response = await raw.response()
            assert (stream_id, response.payload) == (1, b"raw")
            await within(closing)
            assert s.handlers.cancelled == []
            assert not s.path.exists()
            assert await raw.closed_by_peer()
        finally:
            await raw.close()
            await c.close()


async def test_close_cancels_calls_still_running_after_the_grace_time(sock_dir: Path) -> None:
    async with serving(sock_dir) as s:
        c = await Client.connect(s.address)
        running = asyncio.create_task(c.call(SERVICE, "Block", b"stuck"))
        await within(s.handlers.entered.get())
        started = time.monotonic()
        await within(s.server.close(grace=0.2))
        assert 0.2 <= time.monotonic() - started < 2
        with pytest.raises(TtrpcError) as caught:
            await within(running)
        assert caught.value.code == Code.UNAVAILABLE
        assert s.handlers.cancelled == ["stuck"]
        await c.close()


async def test_serve_runs_until_close_and_cancelling_it_closes(sock_dir: Path) -> None:
    handlers = Handlers()
    server = Server()
    server.register(SERVICE, handlers.methods())  # type: ignore[arg-type]
    path = sock_dir / "serve.sock"
    serving_task = asyncio.create_task(server.serve(f"unix://{path}"))
    for _ in range(500):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    c = await Client.connect(f"unix://{path}")
    running = asyncio.create_task(c.call(SERVICE, "Block", b"cut short"))
    await within(handlers.entered.get())
    assert not serving_task.done()
    serving_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(serving_task)
    assert handlers.cancelled == ["cut short"]
    with pytest.raises(TtrpcError) as caught:
        await within(running)
    assert caught.value.code == Code.UNAVAILABLE
    assert not path.exists()
    await c.close()


async def test_in_flight_cap_per_connection(sock_dir: Path) -> None:
    async with serving(sock_dir, max_in_flight=2) as s, await Client.connect(s.address) as c:
        blocked = [asyncio.create_task(c.call(SERVICE, "Block", b"%d" % i)) for i in range(2)]
        for _ in blocked:
            await within(s.handlers.entered.get())
        with pytest.raises(TtrpcError) as caught:
            await c.call(SERVICE, "Echo", b"third")
        assert caught.value.code == Code.RESOURCE_EXHAUSTED
        assert "limit 2" in caught.value.message
        s.handlers.release.set()
        assert await within(asyncio.gather(*blocked)) == [b"0", b"1"]
        assert await c.call(SERVICE, "Echo", b"room again") == b"room again"


async def test_connection_cap(sock_dir: Path) -> None:
    async with serving(sock_dir, max_connections=1) as s:
        first = await Client.connect(s.address)
        assert await first.call(SERVICE, "Echo", b"one") == b"one"
        second = await Client.connect(s.address)
        with pytest.raises(TtrpcError) as caught:
            await within(second.call(SERVICE, "Echo", b"two"))
        assert caught.value.code == Code.RESOURCE_EXHAUSTED
        assert "too many connections" in caught.value.message
        await second.close()
        await first.close()
        for _ in range(200):
            if s.server.connection_count == 0:
                break
            await asyncio.sleep(0.01)
        async with await Client.connect(s.address) as third:
            assert await third.call(SERVICE, "Echo", b"three") == b"three"


async def test_connections_whose_peer_already_hung_up_do_not_count_against_the_cap(sock_dir: Path) -> None:
    """A burst of connects dropped before the server got to accept them: all are accepted together with the
    caller behind them, their EOFs not read yet; at the cap the server lets them go and serves the call."""
    async with serving(sock_dir, max_connections=4) as s:
        alive = await Client.connect(s.address)  # a real connection holds one place throughout
        assert await alive.call(SERVICE, "Echo", b"alive") == b"alive"
        for _ in range(20):  # no await in this loop: the server accepts none of them yet
            dropped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            dropped.connect(str(s.path))
            dropped.close()
        async with await Client.connect(s.address) as behind:
            assert await within(behind.call(SERVICE, "Echo", b"behind")) == b"behind"
        assert await alive.call(SERVICE, "Echo", b"still") == b"still"
        await alive.close()


# -- listeners ----------------------------------------------------------------------------------------------


async def test_socket_file_mode_and_parent_directory(sock_dir: Path) -> None:
    async with serving(sock_dir) as s:
        assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    server = Server()
    nested = sock_dir / "new" / "dir" / "s.sock"
    await server.start(f"unix://{nested}", mode=0o660)
    try:
        assert stat.S_IMODE(nested.stat().st_mode) == 0o660
        assert stat.S_IMODE(nested.parent.stat().st_mode) == 0o700
    finally:
        await server.close()


async def test_stale_socket_is_replaced_but_live_sockets_and_files_are_not(sock_dir: Path) -> None:
    stale = sock_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, nobody listens: what a crashed server leaves behind
    async with serving(sock_dir, name="stale.sock") as s:
        async with await Client.connect(s.address) as c:
            assert await c.call(SERVICE, "Echo", b"replaced") == b"replaced"
        with pytest.raises(TransportError, match="already listening"):
            await Server().start(s.address)
        assert await Client.connect(s.address) is not None  # the live server is untouched
    regular = sock_dir / "regular"
    regular.write_text("keep me")
    with pytest.raises(TransportError, match="not a socket"):
        await Server().start(f"unix://{regular}")
    assert regular.read_text() == "keep me"


async def test_dial_errors_name_the_address(sock_dir: Path) -> None:
    missing = f"unix://{sock_dir}/missing.sock"
    with pytest.raises(TransportError, match=missing):
        await Client.connect(missing, timeout=1.0)


# -- hybrid vsock --------------------------------------------------------------------------------------------


async def test_hybrid_vsock_handshake_then_ttrpc(served: Served, sock_dir: Path) -> None:
    mux_path = sock_dir / "kata.hvsock"
    async with HybridVsockMuxer(mux_path, served.path, b"OK 1073741824\n") as mux:
        async with await Client.connect(f"hvsock://{mux_path}:1024", timeout=2.0) as c:
            assert await c.call(SERVICE, "Echo", b"through the vmm") == b"through the vmm"
            assert await within(
                asyncio.gather(*(c.call(SERVICE, "Shuffle", b"%d" % i) for i in range(20)))
            ) == [b"%d" % i for i in range(20)]
        assert mux.requests == [b"CONNECT 1024\n"]


@pytest.mark.parametrize(
    ("reply", "complaint"),
    [
        (b"NOPE\n", "answered CONNECT 1024 with b'NOPE'"),
        (b"OK\n", "answered CONNECT 1024 with b'OK'"),
        (b"OK 12 extra\n", "expected 'OK <port>'"),
        (b"x" * 100 + b"\n", "answered CONNECT 1024"),
        (None, "closed the connection instead of answering CONNECT 1024"),
        (b"", "no connection within 0.3s"),
    ],
)
async def test_hybrid_vsock_bad_handshakes_are_clear_errors(
    served: Served, sock_dir: Path, reply: bytes | None, complaint: str
) -> None:
    mux_path = sock_dir / "kata.hvsock"
    address = f"hvsock://{mux_path}:1024"
    async with HybridVsockMuxer(mux_path, served.path, reply):
        with pytest.raises(TransportError) as caught:
            await within(Client.connect(address, timeout=0.3))
    assert address in str(caught.value)
    assert complaint in str(caught.value)


# -- vsock ---------------------------------------------------------------------------------------------------


def vsock_unsupported() -> str | None:
    """Why this machine cannot make AF_VSOCK sockets, or None when it can."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return "this Python has no AF_VSOCK"
    try:
        socket.socket(family, socket.SOCK_STREAM).close()
    except OSError as exc:
        return f"the kernel refused AF_VSOCK: {exc}"
    return None


async def test_vsock_listener_or_a_clear_error() -> None:
    address = "vsock://-1:4294967295"  # any CID, and any port (VMADDR_PORT_ANY): the kernel picks one
    server = Server()
    reason = vsock_unsupported()
    if reason is not None:
        with pytest.raises(TransportError, match="AF_VSOCK") as caught:
            await server.start(address)
        assert address in str(caught.value)
        return
    listener = await server.start(address)
    try:
        cid, port = listener.sockets[0].getsockname()
        assert cid == 0xFFFFFFFF
        assert 0 < port < 0xFFFFFFFF
        # The same port twice: the kernel says no, and the error names the address.
        taken = f"vsock://-1:{port}"
        with pytest.raises(TransportError, match="cannot listen") as caught:
            await Server().start(taken)
        assert taken in str(caught.value)
    finally:
        await server.close()


async def test_vsock_dial_of_any_cid_is_refused() -> None:
    with pytest.raises(TransportError, match="only be listened on"):
        await Client.connect("vsock://-1:1024", timeout=0.5)


async def test_hvsock_cannot_be_listened_on(sock_dir: Path) -> None:
    with pytest.raises(TransportError, match="dial-only"):
        await Server().start(f"hvsock://{sock_dir}/x.hvsock:1024")


# -- the blocking client -------------------------------------------------------------------------------------


@contextlib.contextmanager
def server_thread(sock_dir: Path) -> Iterator[str]:
    """A Server on its own event loop in a thread, for the SyncClient (which runs a loop in ours)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    address = f"unix://{sock_dir}/sync.sock"

    async def start() -> Server:
        server = Server()
        server.register(SERVICE, Handlers().methods())  # type: ignore[arg-type]
        await server.start(address)
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    try:
        yield address
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_sync_client(sock_dir: Path) -> None:
    with server_thread(sock_dir) as address:
        with SyncClient(address, timeout=2.0) as c:
            assert c.call(SERVICE, "Echo", b"blocking") == b"blocking"
            assert json.loads(c.call(SERVICE, "Metadata", b"", metadata={"K": "v"})) == {"k": ["v"]}
            with pytest.raises(TtrpcError) as caught:
                c.call(SERVICE, "Sleep", b"30", timeout=0.1)
            assert caught.value.code == Code.DEADLINE_EXCEEDED
            assert c.call(SERVICE, "Echo", b"again") == b"again"
        c.close()  # idempotent
        with pytest.raises(TransportError):
            SyncClient(f"unix://{sock_dir}/absent.sock", timeout=0.5)


def test_sync_client_drops_a_late_answer_and_fails_when_the_server_hangs_up(sock_dir: Path) -> None:
    """The blocking client keeps Client's rules: an expired call's late answer is stray, a hang-up inside a
    frame fails the call (and every later one) with UNAVAILABLE."""
    path = sock_dir / "scripted.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def scripted_server() -> None:
        conn, _ = listener.accept()
        decoder = FrameDecoder()
        frames: list[object] = []
        while len(frames) < 2:
            frames += decoder.feed(conn.recv(65536))
        late = encode_frame(1, MessageType.RESPONSE, 0, encode_response(b"late"))
        conn.sendall(late + encode_frame(3, MessageType.RESPONSE, 0, encode_response(b"second")))
        while len(frames) < 3:
            frames += decoder.feed(conn.recv(65536))
        conn.sendall(encode_frame(5, MessageType.RESPONSE, 0, encode_response(b"cut short"))[:12])
        conn.close()

    thread = threading.Thread(target=scripted_server, daemon=True)
    thread.start()
    try:
        with SyncClient(f"unix://{path}", timeout=5.0) as c:
            with pytest.raises(TtrpcError) as caught:
                c.call(SERVICE, "Echo", b"first", timeout=0.1)
            assert caught.value.code == Code.DEADLINE_EXCEEDED
            assert not c.closed
            assert c.call(SERVICE, "Echo", b"second") == b"second"
            with pytest.raises(TtrpcError) as caught:
                c.call(SERVICE, "Echo", b"third")
            assert caught.value.code == Code.UNAVAILABLE
            assert "truncated frame" in caught.value.message
            assert c.closed
            with pytest.raises(TtrpcError) as caught:
                c.call(SERVICE, "Echo", b"fourth")
            assert caught.value.code == Code.UNAVAILABLE
    finally:
        thread.join(5)
        listener.close()
