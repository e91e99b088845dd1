"""Calls that wait in no task, over real unix sockets: a server handler answering through a Later, and a
client call answered through a callback (``Client.start_until``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shimstats.ttrpc import (
    CallContext,
    Client,
    Code,
    Frame,
    FrameDecoder,
    Later,
    MessageType,
    Server,
    TtrpcError,
    encode_frame,
)
from shimstats.ttrpc.framing import decode_response, encode_request
from tests.integration.test_ttrpc_socket import within

SERVICE = "test.v1.Later"


async def until(test: Callable[[], bool]) -> None:
    """Wait (5 s at most) until ``test()`` holds."""
    for _ in range(500):
        if test():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("still not so after 5 s")


@dataclass
class Deferring:
    """Handlers that return a Later and settle it from a loop callback, as the adapter's Stats does."""

    laters: list[Later] = field(default_factory=list)
    cancelled: list[bytes] = field(default_factory=list)

    def _later(self, payload: bytes, *, bounded: bool = False) -> Later:
        later = Later(bounded=bounded)
        later.on_cancel = lambda: self.cancelled.append(payload)
        self.laters.append(later)
        return later

    def soon(self, payload: bytes, ctx: CallContext) -> Later:
        """Echo, settled in a later loop turn."""
        later = self._later(payload)
        asyncio.get_running_loop().call_soon(later.settle, payload)
        return later

    def fail(self, payload: bytes, ctx: CallContext) -> Later:
        later = self._later(payload)
        error: Exception = TtrpcError(Code.NOT_FOUND, payload.decode()) if payload else ValueError("bug")
        asyncio.get_running_loop().call_soon(later.settle, error)
        return later

    def at_once(self, payload: bytes, ctx: CallContext) -> Later:
        """Settled before the server has even seen it."""
        later = self._later(payload)
        later.settle(payload + b"!")
        return later

    def never(self, payload: bytes, ctx: CallContext) -> Later:
        return self._later(payload)

    def bounded_late(self, payload: bytes, ctx: CallContext) -> Later:
        """Claims to be bounded, then settles a while after the deadline: the server set no timer."""
        later = self._later(payload, bounded=True)
        assert ctx.deadline is not None
        asyncio.get_running_loop().call_at(ctx.deadline + 0.2, later.settle, b"mine")
        return later


@dataclass
class Served:
    server: Server
    address: str
    handlers: Deferring


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[Served]:
    handlers = Deferring()
    server = Server()
    server.register(
        SERVICE,
        {
            "Soon": handlers.soon,
            "Fail": handlers.fail,
            "AtOnce": handlers.at_once,
            "Never": handlers.never,
            "BoundedLate": handlers.bounded_late,
        },
    )
    address = f"unix://{sock_dir}/later.sock"
    await server.start(address)
    try:
        yield Served(server, address, handlers)
    finally:
        await within(server.close(grace=0.5))


async def test_a_later_is_answered_when_settled(served: Served) -> None:
    async with await Client.connect(served.address) as client:
        answers = await within(asyncio.gather(*(client.call(SERVICE, "Soon", b"%d" % i) for i in range(50))))
        assert answers == [b"%d" % i for i in range(50)]
        assert await client.call(SERVICE, "AtOnce", b"now") == b"now!"
    assert served.handlers.cancelled == []


async def test_a_later_settled_with_an_error_answers_its_status(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    async with await Client.connect(served.address) as client:
        with pytest.raises(TtrpcError) as caught:
            await client.call(SERVICE, "Fail", b"no such thing")
        assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "no such thing")
        with caplog.at_level(logging.ERROR, logger="shimstats.ttrpc"), pytest.raises(TtrpcError) as caught:
            await client.call(SERVICE, "Fail", b"")
        assert (caught.value.code, caught.value.message) == (Code.UNKNOWN, "bug")
    assert any("Fail" in r.getMessage() and r.exc_info for r in caplog.records)  # a bug keeps its traceback


async def test_an_unbounded_later_past_its_deadline_is_cancelled_and_answered_deadline_exceeded(
    served: Served,
) -> None:
    # A raw request with timeout_nano and no timer of ours: the answer can only be the server's.
    reader, writer = await asyncio.open_unix_connection(served.address.removeprefix("unix://"))
    envelope = encode_request(SERVICE, "Never", b"late", timeout_nano=200_000_000)
    writer.write(encode_frame(1, MessageType.REQUEST, 0, envelope))
    decoder = FrameDecoder()
    events = decoder.feed(await within(reader.read(65536)))
    writer.close()
    [frame] = events
    assert isinstance(frame, Frame)
    assert frame.stream_id == 1
    status = decode_response(frame.payload).status
    assert status is not None
    assert (status.code, status.message) == (
        Code.DEADLINE_EXCEEDED,
        f"{SERVICE}/Never did not finish before the deadline",
    )
    assert served.handlers.cancelled == [b"late"]
    async with await Client.connect(served.address) as client:
        served.handlers.laters[0].settle(b"too late")  # ignored: the stream was answered already
        assert await client.call(SERVICE, "Soon", b"after") == b"after"


async def test_a_bounded_later_gets_no_timer_from_the_server(served: Served) -> None:
    async with await Client.connect(served.address) as client:
        stream = client.call(SERVICE, "BoundedLate", b"", timeout=0.1)
        with pytest.raises(TtrpcError) as caught:
            await within(stream)
        assert caught.value.message.startswith(f"{SERVICE}/BoundedLate: no answer from")  # our client's timer
        assert served.handlers.cancelled == []
        await asyncio.sleep(0.3)  # the handler settles 0.2 s after the deadline; its answer is sent
        assert served.handlers.laters[0].settled
        assert await client.call(SERVICE, "Soon", b"still up") == b"still up"


async def test_a_closed_connection_cancels_its_laters(served: Served) -> None:
    client = await Client.connect(served.address)
    pending = [asyncio.ensure_future(client.call(SERVICE, "Never", b"%d" % i)) for i in range(3)]
    await until(lambda: len(served.handlers.laters) == 3)
    await client.close()
    for call in pending:
        with pytest.raises(TtrpcError):
            await within(call)
    await until(lambda: len(served.handlers.cancelled) == 3)
    assert sorted(served.handlers.cancelled) == [b"0", b"1", b"2"]
    assert served.server.connection_count == 0


# -- the client side ---------------------------------------------------------------------------------------


class Outcomes:
    """What a start_until callback was given, and a future that is done at the first."""

    def __init__(self) -> None:
        self.seen: list[bytes | TtrpcError] = []
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __call__(self, outcome: bytes | TtrpcError) -> None:
        self.seen.append(outcome)
        if not self.first.done():
            self.first.set_result(None)


async def test_start_until_answers_through_its_callback(served: Served) -> None:
    loop = asyncio.get_running_loop()
    async with await Client.connect(served.address) as client:
        answer, failure = Outcomes(), Outcomes()
        client.start_until(SERVICE, "Soon", b"hello", loop.time() + 5, "late", answer)
        client.start_until(SERVICE, "Fail", b"gone", loop.time() + 5, "late", failure)
        await within(asyncio.gather(answer.first, failure.first))
        assert answer.seen == [b"hello"]
        [error] = failure.seen
        assert isinstance(error, TtrpcError)
        assert (error.code, error.message) == (Code.NOT_FOUND, "gone")


async def test_start_until_expires_with_its_own_message_and_drops_a_late_answer(served: Served) -> None:
    loop = asyncio.get_running_loop()
    async with await Client.connect(served.address) as client:
        outcomes = Outcomes()
        client.start_until(SERVICE, "BoundedLate", b"", loop.time() + 0.1, "the probe ran late", outcomes)
        await within(outcomes.first)
        await asyncio.sleep(0.4)  # the server's answer comes 0.2 s after the deadline, and is dropped
        [error] = outcomes.seen
        assert isinstance(error, TtrpcError)
        assert (error.code, error.message) == (Code.DEADLINE_EXCEEDED, "the probe ran late")
        assert await client.call(SERVICE, "Soon", b"next") == b"next"  # the connection is kept
        with pytest.raises(TtrpcError) as caught:
            client.start_until(SERVICE, "Soon", b"", loop.time() - 1, "late", outcomes)
        assert caught.value.code == Code.DEADLINE_EXCEEDED  # a passed deadline fails at once, unsent


async def test_start_until_cancelled_never_calls_back(served: Served) -> None:
    loop = asyncio.get_running_loop()
    async with await Client.connect(served.address) as client:
        cancelled, answered = Outcomes(), Outcomes()
        client.start_until(SERVICE, "Soon", b"unwanted", loop.time() + 0.2, "late", cancelled).cancel()
        client.start_until(SERVICE, "Soon", b"wanted", loop.time() + 5, "late", answered)
        await within(answered.first)
        await asyncio.sleep(0.3)  # past the cancelled call's deadline too: its timer is gone
    assert cancelled.seen == []
    assert answered.seen == [b"wanted"]


async def test_start_until_fails_unavailable_when_the_connection_goes(served: Served) -> None:
    loop = asyncio.get_running_loop()
    client = await Client.connect(served.address)
    outcomes = Outcomes()
    client.start_until(SERVICE, "Never", b"", loop.time() + 5, "late", outcomes)
    await served.server.close(grace=0)
    await within(outcomes.first)
    [error] = outcomes.seen
    assert isinstance(error, TtrpcError)
    assert error.code == Code.UNAVAILABLE
    assert client.closed
    with pytest.raises(TtrpcError) as caught:
        client.start_until(SERVICE, "Soon", b"", loop.time() + 5, "late", outcomes)
    assert caught.value.code == Code.UNAVAILABLE
    await client.close()
