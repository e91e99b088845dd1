"""Answers written while one read is handled leave in one write: observed in the kernel's socket buffers.

A unix stream socket keeps one buffer (skb) per send in the receiver's queue until it is read, and the
kernel charges each buffer's true size (payload plus its overhead) to the *sending* socket, which
``SO_MEMINFO`` reports as ``wmem_alloc`` (net/unix/af_unix.c, unix_stream_sendmsg: skb_set_owner_w). So N
frames sent by N sends cost the sender about N overheads until read, the same frames sent by one send one
overhead. Both are calibrated on this kernel with a socket pair before the server is asked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import select
import socket
import struct
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

from shimstats.ttrpc import CallContext, MessageType, Server, encode_frame
from shimstats.ttrpc.connection import response_frame
from shimstats.ttrpc.framing import encode_request, encode_response

SERVICE = "test.v1.Batch"
SO_MEMINFO = 55  # include/uapi/asm-generic/socket.h; a u32 array (include/uapi/linux/sock_diag.h)
SK_MEMINFO_WMEM_ALLOC = 2


def wmem_alloc(sock: socket.socket) -> int:
    """Bytes the kernel charges ``sock`` for what it sent that its peer has not read yet."""
    meminfo = struct.unpack_from("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4))
    return int(meminfo[SK_MEMINFO_WMEM_ALLOC])


def accepted_socket(path: Path) -> socket.socket:
    """This process's connected socket bound to ``path``: the server's end of our one connection."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket (or already gone)
            continue
        try:
            if sock.family == socket.AF_UNIX and sock.getsockname() == str(path):
                sock.getpeername()  # the listening socket has no peer: ENOTCONN
                return sock
        except OSError:
            pass
        sock.close()
    raise AssertionError(f"no accepted socket on {path}")


def queued(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def wait_for_bytes(sock: socket.socket, wanted: int) -> None:
    """Until ``wanted`` bytes wait unread in ``sock``'s queue, without reading them (bounded: 10 s)."""
    for _ in range(1000):
        if queued(sock) >= wanted:
            return
        select.select([], [], [], 0.01)
    raise AssertionError(f"only {queued(sock)} of {wanted} bytes arrived")


def charged_for(frames: list[bytes], *, sends: int) -> int:
    """wmem_alloc of a socket pair's sender once ``frames``, sent in one send or one send each, arrived."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        if sends == 1:
            left.sendall(b"".join(frames))
        else:
            for frame in frames:
                left.sendall(frame)
        wait_for_bytes(right, sum(map(len, frames)))
        return wmem_alloc(left)


def plain_echo(payload: bytes, ctx: CallContext) -> bytes:
    return payload


@contextlib.contextmanager
def server_in_thread(path: Path) -> Iterator[None]:
    """A Server with a plain (inline) echo handler on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Server:
        server = Server()
        server.register(SERVICE, {"Echo": plain_echo})
        await server.start(f"unix://{path}")
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_answers_to_requests_of_one_read_leave_in_one_send(sock_dir: Path) -> None:
    payloads = [f"answer {i}".encode() * (i + 1) for i in range(8)]
    stream_ids = range(1, 2 * len(payloads), 2)
    requests = b"".join(
        encode_frame(stream_id, MessageType.REQUEST, 0, encode_request(SERVICE, "Echo", payload))
        for stream_id, payload in zip(stream_ids, payloads)
    )
    answers = [
        response_frame(stream_id, encode_response(payload))
        for stream_id, payload in zip(stream_ids, payloads)
    ]
    one_send, send_each = charged_for(answers, sends=1), charged_for(answers, sends=len(answers))
    assert one_send < send_each, "this kernel's accounting cannot tell one send from eight"

    path = sock_dir / "batch.sock"
    with server_in_thread(path), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(requests)  # one send of eight whole frames: the server reads them in one read
        wait_for_bytes(sock, sum(map(len, answers)))
        with accepted_socket(path) as server_end:
            charged = wmem_alloc(server_end)
        received = b""
        while len(received) < sum(map(len, answers)):
            received += sock.recv(65536)
    assert received == b"".join(answers)  # every frame whole, in request order
    assert charged == one_send
