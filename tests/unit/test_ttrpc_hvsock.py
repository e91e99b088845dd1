"""The hybrid vsock handshake without a socket: the CONNECT line and the reader of the VMM's answer."""

from __future__ import annotations

import pytest

from shimstats.ttrpc.hvsock import HANDSHAKE_MAX, HandshakeError, HandshakeReply, connect_request


def test_the_request_line() -> None:
    assert connect_request(1024) == b"CONNECT 1024\n"


def test_an_ok_line_fed_byte_by_byte_completes_at_its_newline() -> None:
    reply = HandshakeReply(1024)
    line = b"OK 1073741824\n"
    for byte in line[:-1]:
        assert reply.feed(bytes([byte])) is None
    assert reply.feed(b"\n") == b""


def test_bytes_after_the_line_are_handed_back_untouched() -> None:
    assert HandshakeReply(2).feed(b"OK 7\n\x00\x00\x00\x05rest") == b"\x00\x00\x00\x05rest"


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"NOPE\n", "answered CONNECT 1024 with b'NOPE', expected 'OK <port>'"),
        (b"OK\n", "answered CONNECT 1024 with b'OK', expected 'OK <port>'"),
        (b"OK 12 extra\n", "answered CONNECT 1024 with b'OK 12 extra', expected 'OK <port>'"),
    ],
)
def test_anything_but_ok_and_a_number_is_refused(answer: bytes, complaint: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        HandshakeReply(1024).feed(answer)
    assert str(caught.value) == complaint


def test_a_line_longer_than_any_answer_is_refused_without_waiting_for_its_end() -> None:
    reply = HandshakeReply(1024)
    assert reply.feed(b"x" * HANDSHAKE_MAX) is None
    with pytest.raises(HandshakeError, match="answered CONNECT 1024 with b'xxx"):
        reply.feed(b"x")


def test_a_hang_up_says_what_came_first() -> None:
    with pytest.raises(HandshakeError) as caught:
        HandshakeReply(5).eof()
    assert str(caught.value) == (
        "closed the connection instead of answering CONNECT 5 (is anything listening on guest vsock port 5?)"
    )
    reply = HandshakeReply(5)
    reply.feed(b"OK")
    with pytest.raises(HandshakeError, match=r"CONNECT 5; it sent b'OK' first"):
        reply.eof()
