"""shimstats.ttrpc framing, envelope and status: the wire format without any I/O."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shimstats._proto.ttrpc.request_pb2 import Request
from shimstats.protowire import AnyMessage as Any
from shimstats.ttrpc.framing import (
    HEADER_LEN,
    MAX_MESSAGE,
    Event,
    Frame,
    FrameDecoder,
    KeyValue,
    MessageType,
    OversizedFrame,
    ProtocolError,
    decode_request,
    decode_response,
    encode_frame,
    encode_request,
    encode_response,
    metadata_pairs,
)
from shimstats.ttrpc.status import Code, TtrpcError, error_from_status, make_status


def header(length: int, stream_id: int, mtype: int, flags: int = 0) -> bytes:
    """A frame header built independently of the code under test (docs/spec/ttrpc.md §1: >IIBB)."""
    return struct.pack(">IIBB", length, stream_id, mtype, flags)


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


# -- encoding ------------------------------------------------------------------------------------------------


def test_worked_example_from_the_fact_sheet_byte_for_byte() -> None:
    # docs/spec/ttrpc.md §1: a unary request on stream 1 with a 37-byte Request is
    # 00 00 00 25 | 00 00 00 01 | 01 | 00.
    # The 37 bytes, written out by the protobuf rules (tag = field << 3 | wire type 2, then a length):
    body = (
        b"\x0a\x17" + b"containerd.task.v2.Task"  # field 1 service, 23 bytes
        b"\x12\x05" + b"Stats"  # field 2 method, 5 bytes
        b"\x1a\x03" + b"\x0a\x01c"  # field 3 payload: StatsRequest{id: "c"}
    )
    assert len(body) == 37
    request = encode_request("containerd.task.v2.Task", "Stats", b"\x0a\x01c")
    assert request == body
    frame = encode_frame(1, MessageType.REQUEST, 0, request)
    assert frame[:HEADER_LEN] == bytes.fromhex("00000025 00000001 01 00")
    assert frame[HEADER_LEN:] == body


def test_encode_frame_round_trips_through_the_decoder() -> None:
    frames = [
        Frame(1, MessageType.REQUEST, 0, b"hello"),
        Frame(3, MessageType.DATA, 0x5, b""),
        Frame(0xFFFFFFFF, 0xFF, 0xFF, bytes(range(256))),
        Frame(2, MessageType.RESPONSE, 0, b"x" * 70_000),
    ]
    wire = b"".join(encode_frame(f.stream_id, f.mtype, f.flags, f.payload) for f in frames)
    decoder = FrameDecoder()
    assert decoder.feed(wire) == frames
    assert decoder.pending == 0
    decoder.eof()


def test_zero_length_payload_is_a_whole_frame() -> None:
    decoder = FrameDecoder()
    events = decoder.feed(header(0, 7, MessageType.DATA, 0x5))
    assert events == [Frame(7, MessageType.DATA, 0x5, b"")]
    assert isinstance(events[0], Frame)
    assert type(events[0].payload) is bytes
    decoder.eof()


def test_exactly_four_mib_is_allowed_and_one_more_byte_is_not() -> None:
    payload = b"\x01" * MAX_MESSAGE
    frame = encode_frame(1, MessageType.REQUEST, 0, payload)
    assert frame[:4] == (4 << 20).to_bytes(4, "big")
    assert FrameDecoder().feed(frame) == [Frame(1, MessageType.REQUEST, 0, payload)]

    with pytest.raises(TtrpcError) as caught:
        encode_frame(1, MessageType.REQUEST, 0, payload + b"\x01")
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    assert str(MAX_MESSAGE + 1) in caught.value.message


def test_encode_frame_refuses_header_fields_out_of_range() -> None:
    with pytest.raises(ValueError, match="stream id"):
        encode_frame(1 << 32, MessageType.REQUEST, 0, b"")
    with pytest.raises(ValueError, match="type 256"):
        encode_frame(1, 256, 0, b"")


# -- decoding malformed input --------------------------------------------------------------------------------


def test_oversized_frame_is_reported_and_its_body_skipped_across_feeds() -> None:
    length = MAX_MESSAGE + 1
    after = encode_frame(5, MessageType.REQUEST, 0, b"next")
    decoder = FrameDecoder()
    assert decoder.feed(header(length, 3, MessageType.REQUEST) + b"\xaa" * 1000) == [
        OversizedFrame(3, MessageType.REQUEST, length)
    ]
    assert decoder.pending == length - 1000
    remaining = length - 1000
    chunk = 300_000
    while remaining > chunk:
        assert decoder.feed(b"\xbb" * chunk) == []
        remaining -= chunk
    # The last body bytes and the next frame arrive together: exactly `length` bytes were skipped.
    assert decoder.feed(b"\xcc" * remaining + after) == [Frame(5, MessageType.REQUEST, 0, b"next")]
    assert decoder.pending == 0
    decoder.eof()


def test_nonzero_first_byte_means_oversized() -> None:
    # Byte 0 set gives a length of at least 16 MiB, always over the 4 MiB limit.
    raw = b"\x01\x00\x00\x00" + b"\x00\x00\x00\x09" + b"\x01\x00"
    decoder = FrameDecoder()
    assert decoder.feed(raw) == [OversizedFrame(9, 1, 1 << 24)]
    assert decoder.pending == 1 << 24


def test_garbage_text_is_one_oversized_frame() -> None:
    garbage = b"GET / HTTP/1.1\r\n\r\n"
    length, stream_id = struct.unpack(">II", garbage[:8])
    events = FrameDecoder().feed(garbage)
    assert events == [OversizedFrame(stream_id, garbage[8], length)]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (header(5, 1, 1)[:3], "3 of 10 header bytes"),
        (header(5, 1, 1), "10 of 15 bytes"),
        (header(5, 1, 1) + b"abcd", "14 of 15 bytes"),
        (header(MAX_MESSAGE + 10, 1, 1) + b"abc", "oversized body"),
    ],
)
def test_eof_inside_a_frame_is_a_protocol_error(wire: bytes, message: str) -> None:
    decoder = FrameDecoder()
    decoder.feed(wire)
    with pytest.raises(ProtocolError, match=message):
        decoder.eof()


def test_eof_at_a_frame_boundary_is_clean() -> None:
    decoder = FrameDecoder()
    decoder.eof()
    decoder.feed(encode_frame(1, 1, 0, b"abc"))
    decoder.eof()


def test_decoder_accepts_any_buffer_type_and_returns_bytes_payloads() -> None:
    wire = encode_frame(1, 1, 0, b"payload")
    for buffer in (bytearray(wire), memoryview(wire)):
        events = FrameDecoder().feed(buffer)  # type: ignore[arg-type]
        assert events == [Frame(1, 1, 0, b"payload")]
        assert isinstance(events[0], Frame)
        assert type(events[0].payload) is bytes


# -- properties ----------------------------------------------------------------------------------------------

frames_strategy = st.lists(
    st.builds(
        Frame,
        stream_id=st.integers(0, 0xFFFFFFFF),
        mtype=st.integers(0, 255),
        flags=st.integers(0, 255),
        payload=st.binary(max_size=300),
    ),
    max_size=12,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_frames_split_anywhere_reassemble_identically(frames: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.stream_id, f.mtype, f.flags, f.payload) for f in frames)
    decoder = FrameDecoder()
    assert feed_all(decoder, split_at(wire, cuts)) == frames
    decoder.eof()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_arbitrary_bytes_in_arbitrary_chunks_only_ever_raise_protocol_error(
    data: bytes, cuts: list[int]
) -> None:
    chunked = FrameDecoder()
    whole = FrameDecoder()
    events = feed_all(chunked, split_at(data, cuts))  # feeding never raises
    assert events == whole.feed(data)  # and chunking never changes what comes out
    assert chunked.pending == whole.pending
    try:
        chunked.eof()
    except ProtocolError:
        assert chunked.pending > 0
    else:
        assert chunked.pending == 0


# -- envelope ------------------------------------------------------------------------------------------------


def test_request_envelope_round_trip_with_metadata_and_deadline() -> None:
    pairs = metadata_pairs({"containerd-namespace-ttrpc": "k8s.io", "Multi": ["a", "b"]})
    assert [(p.key, p.value) for p in pairs] == [
        ("containerd-namespace-ttrpc", "k8s.io"),
        ("Multi", "a"),
        ("Multi", "b"),
    ]
    data = encode_request("svc.S", "M", b"\x00\x01", timeout_nano=1_500_000_000, metadata=pairs)
    request = decode_request(data)
    assert (request.service, request.method, request.payload, request.timeout_nano) == (
        "svc.S",
        "M",
        b"\x00\x01",
        1_500_000_000,
    )
    assert list(request.metadata) == [KeyValue(key=p.key, value=p.value) for p in pairs]
    assert metadata_pairs(None) == []
    assert metadata_pairs({}) == []


def test_undecodable_envelopes_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="request"):
        decode_request(b"\x0a\x05ab")  # field 1 claims 5 bytes, 2 follow
    with pytest.raises(ProtocolError, match="response"):
        decode_response(b"\xff\xff\xff")
    # Invalid UTF-8 in a string field is not a Request either.
    with pytest.raises(ProtocolError):
        decode_request(b"\x0a\x02\xff\xfe")


def test_ok_response_leaves_the_status_out_like_go() -> None:
    # containerd's Go server marshals a nil status for OK, so the envelope is the payload field alone
    # (seen on the wire from Debian containerd 1.6.20's runc shim: a Connect answer starts 12 08 ...).
    assert encode_response(b"hi") == b"\x12\x02hi"
    response = decode_response(encode_response(b"hi"))
    assert error_from_status(response.status) is None
    assert response.payload == b"hi"


def test_absent_and_empty_status_both_mean_ok() -> None:
    absent = decode_response(b"\x12\x01x")  # payload only: how a server may omit the status
    assert absent.status is None
    assert error_from_status(absent.status) is None
    assert error_from_status(None) is None
    assert error_from_status(make_status(Code.OK, "ignored")) is None


def test_error_status_round_trip_with_details() -> None:
    detail = Any(type_url="type.googleapis.com/google.protobuf.StringValue", value=b"\x0a\x02hi")
    error = TtrpcError(Code.NOT_FOUND, "container x not found", [detail])
    response = decode_response(encode_response(b"", error.to_status()))
    back = error_from_status(response.status)
    assert back is not None
    assert (back.code, back.message, back.details) == (Code.NOT_FOUND, "container x not found", [detail])
    assert str(back) == "NOT_FOUND: container x not found"


def test_unknown_status_code_becomes_unknown_and_keeps_the_number() -> None:
    error = error_from_status(make_status(42, "odd"))
    assert error is not None
    assert error.code == Code.UNKNOWN
    assert "42" in error.message
    assert "odd" in error.message


def test_code_numbers_match_grpc() -> None:
    assert [c.value for c in Code] == list(range(17))
    assert Code(8).name == "RESOURCE_EXHAUSTED"
    assert Code(16).name == "UNAUTHENTICATED"


def test_request_envelope_is_the_generated_message() -> None:
    data = encode_request("a", "b", b"c")
    assert Request.FromString(data) == Request(service="a", method="b", payload=b"c")


def test_ttrpc_imports_neither_grpcio_nor_psutil() -> None:
    # The guest agent uses this package and guest images carry protobuf only; ask a fresh interpreter.
    probe = (
        "import sys, shimstats.ttrpc\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'psutil'))\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
