"""ttrpc over a character device (``serial:///dev/...``), the transport guest-test's agent listens on.

In the VM the device is a virtio-serial port and the host end a unix socket qemu makes. Here a pseudo-terminal
in raw mode stands in for it: the listener serves the terminal's device file, the test plays the host on the
master side, behind a unix socket as qemu's. What a pty cannot show (the host end closing and coming back on
the same device) is exercised in the VM by test_guest_test_run.py.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress

import pytest

from shimstats.ttrpc import Client, Server, TransportError, create_listener
from shimstats.ttrpc.framing import MessageType, encode_frame, encode_request

SERVICE = "test.v1.Serial"


async def echo(payload: bytes, context: object) -> bytes:
    return b"echo:" + payload


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd, slave device path); the slave stays open here in raw mode so the line discipline keeps
    bytes as they are, and both ends are closed afterwards."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(slave)
        with suppress(OSError):  # a test closes it itself to hang up
            os.close(master)


@asynccontextmanager
async def host_client(master: int) -> AsyncIterator[Client]:
    """The host end as qemu makes it (``-chardev socket``): a unix socket whose bytes go to the port and
    back, here the pty master; and a ttrpc client dialling that socket, as the host does."""
    loop = asyncio.get_running_loop()
    relays: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relays.append(writer)
        loop.add_reader(master, lambda: writer.write(os.read(master, 65536)))
        try:
            while data := await reader.read(65536):
                os.write(master, data)
        finally:
            loop.remove_reader(master)
            writer.close()

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "port.sock")
        listener = await asyncio.start_unix_server(relay, path=path)
        client = await Client.connect(f"unix://{path}", timeout=5)
        try:
            yield client
        finally:
            await asyncio.wait_for(client.close(), 5)
            listener.close()
            for writer in relays:
                writer.close()
            await listener.wait_closed()


def served() -> Server:
    server = Server()
    server.register(SERVICE, {"Echo": echo})
    return server


async def test_calls_over_a_character_device(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    server = served()
    await server.start(f"serial://{device}")
    try:
        async with host_client(master) as client:
            answers = await asyncio.wait_for(
                asyncio.gather(*(client.call(SERVICE, "Echo", b"%d" % i, timeout=5) for i in range(20))), 10
            )
            assert answers == [b"echo:%d" % i for i in range(20)]
            assert server.connection_count == 1
    finally:
        await asyncio.wait_for(server.close(grace=1), 5)


async def test_bytes_the_host_sent_before_the_guest_listened_are_served(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    request = encode_request(SERVICE, "Echo", b"early")
    os.write(master, encode_frame(1, MessageType.REQUEST, 0, request))
    server = served()
    await server.start(f"serial://{device}")
    try:
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while b"echo:early" not in data:
            assert loop.time() < deadline, f"no answer, got {data!r}"
            await asyncio.sleep(0.02)
            with suppress(BlockingIOError):
                data += os.read(master, 4096)
    finally:
        await asyncio.wait_for(server.close(grace=1), 5)


async def test_host_hang_up_ends_the_connection_cleanly(pty_pair: tuple[int, str]) -> None:
    master, device = pty_pair
    server = served()
    await server.start(f"serial://{device}")
    try:
        async with host_client(master) as client:
            assert await client.call(SERVICE, "Echo", b"x", timeout=5) == b"echo:x"
        os.close(master)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.connection_count:
            assert loop.time() < deadline, "the connection outlived the host's hang-up"
            await asyncio.sleep(0.02)
    finally:
        await asyncio.wait_for(server.close(grace=1), 5)


async def test_a_missing_device_fails_at_listen_naming_it() -> None:
    with pytest.raises(TransportError, match="serial:///nonexistent/vport9p9: cannot open the port"):
        await create_listener("serial:///nonexistent/vport9p9", asyncio.Protocol)


async def test_a_serial_port_cannot_be_dialled() -> None:
    with pytest.raises(TransportError, match="dial the VMM's unix socket"):
        await Client.connect("serial:///dev/vport0p1", timeout=1)
