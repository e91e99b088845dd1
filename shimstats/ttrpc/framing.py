"""ttrpc wire format without I/O: frame encoding, an incremental frame decoder and the RPC envelope.

A frame is a 10-byte big-endian header (payload length u32, stream id u32, message type u8, flags u8) and the
payload. Bytes go in, events come out; sockets and asyncio live in client.py and server.py.

Oversized frames: the length limit is 4 MiB, so byte 0 of a valid header is always zero. A header whose
length is over the limit (which includes every header with a nonzero byte 0) is reported as
:class:`OversizedFrame` and its body is skipped, exactly ``length`` bytes, however many feeds that takes. The
stream then carries on with the next header; this is how containerd's Go server answers RESOURCE_EXHAUSTED
without dropping the connection.

The envelope is containerd/ttrpc's request.proto (``Request {string service = 1; string method = 2; bytes
payload = 3; int64 timeout_nano = 4; repeated KeyValue metadata = 5}``, ``KeyValue {string key = 1; string
value = 2}``, ``Response {google.rpc.Status status = 1; bytes payload = 2}``; ttrpc@4b166fb request.proto),
read and written by shimstats.protowire's rules without the protobuf runtime: three tiny messages on every
call, and importing protobuf for them was a quarter of what the proxy's serving process did before it could
answer containerd's first call (docs/benchmarks.md).
"""

# No ``from __future__ import annotations``: the records below are NamedTuples (see shimstats.protowire).

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Optional, Union

from shimstats.protowire import (
    Fields,
    WireError,
    bytes_field,
    encode_varint,
    fields,
    int64,
    message_field,
    read_varint,
    string_field,
    utf8,
)
from shimstats.ttrpc.status import Code, Status, TtrpcError, encode_status, status_from_fields

__all__ = [
    "FLAG_NO_DATA",
    "FLAG_REMOTE_CLOSED",
    "FLAG_REMOTE_OPEN",
    "HEADER_LEN",
    "MAX_MESSAGE",
    "MAX_STREAM_ID",
    "READ_CHUNK",
    "Event",
    "Frame",
    "FrameDecoder",
    "KeyValue",
    "MessageType",
    "Metadata",
    "OversizedFrame",
    "ProtocolError",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_frame",
    "encode_request",
    "encode_response",
    "metadata_pairs",
]

_new = tuple.__new__
"""Builds a record from a tuple of all its fields: a third of the cost of a NamedTuple's own ``__new__``
(keywords and defaults), on every call's path."""

HEADER_LEN = 10
MAX_MESSAGE = 4 << 20  # payload bytes; exactly 4 MiB is still allowed
READ_CHUNK = 64 * 1024  # bytes asked of the socket per read, by every transport
MAX_STREAM_ID = 0xFFFFFFFF

FLAG_REMOTE_CLOSED = 0x1  # Request: no more data from the client. Data: last data from this side.
FLAG_REMOTE_OPEN = 0x2  # Request: the client will stream data.
FLAG_NO_DATA = 0x4  # Data: the frame carries no payload.

_HEADER = struct.Struct(">IIBB")


class MessageType(enum.IntEnum):
    """Frame message types. Decoded frames keep the raw int, since peers may send types we do not know."""

    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class ProtocolError(Exception):
    """The byte stream or an envelope cannot be ttrpc: the one exception type for malformed input."""


class Frame(NamedTuple):
    """One complete frame. (Named tuples, not dataclasses, for the records made per frame and per call in
    shimstats.ttrpc: cheaper to build, and no dataclass machinery to import in the proxy's serving process,
    which containerd's first call waits for.)"""

    stream_id: int
    mtype: int
    flags: int
    payload: bytes


class OversizedFrame(NamedTuple):
    """A header announcing more than MAX_MESSAGE bytes; the decoder skips its body."""

    stream_id: int
    mtype: int
    length: int


Event = Union[Frame, OversizedFrame]
# Call metadata as callers write it: a key maps to one value or to several (sent as repeated pairs, in order).
Metadata = Mapping[str, Union[str, Sequence[str]]]


def encode_frame(stream_id: int, mtype: int, flags: int, payload: bytes) -> bytes:
    """Header plus payload, ready for one write; a payload over 4 MiB is refused with RESOURCE_EXHAUSTED."""
    if len(payload) > MAX_MESSAGE:
        raise TtrpcError(
            Code.RESOURCE_EXHAUSTED,
            f"message of {len(payload)} bytes exceeds the ttrpc limit of {MAX_MESSAGE} bytes",
        )
    try:
        return _HEADER.pack(len(payload), stream_id, mtype, flags) + payload
    except struct.error:
        raise ValueError(
            f"frame header out of range: stream id {stream_id}, type {mtype}, flags {flags}"
        ) from None


class FrameDecoder:
    """Incremental decoder: ``feed`` bytes in any chunking, get whole frames out in order.

    Memory stays bounded by one frame: an oversized body is counted down, never buffered.
    """

    __slots__ = ("_buf", "_discard", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()  # start of an incomplete frame
        self._need = HEADER_LEN  # bytes _buf must hold before it can yield anything
        self._discard = 0  # body bytes of an oversized frame still to skip

    def feed(self, data: bytes) -> list[Event]:
        """Consume ``data`` and return the events it completes (possibly none)."""
        if type(data) is not bytes:
            data = bytes(data)  # payloads must be immutable bytes whatever buffer type came in
        if self._discard:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            if skipped == len(data):
                return []
            data = data[skipped:]
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            data = bytes(self._buf)
            self._buf.clear()
        return self._parse(data)

    def _parse(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos = 0
        end = len(data)
        unpack = _HEADER.unpack_from
        while end - pos >= HEADER_LEN:
            length, stream_id, mtype, flags = unpack(data, pos)
            body = pos + HEADER_LEN
            if length > MAX_MESSAGE:
                events.append(OversizedFrame(stream_id, mtype, length))
                skipped = min(length, end - body)
                self._discard = length - skipped
                pos = body + skipped
                continue
            stop = body + length
            if stop > end:
                self._need = HEADER_LEN + length
                break
            events.append(Frame(stream_id, mtype, flags, data[body:stop]))
            pos = stop
        else:
            self._need = HEADER_LEN
        if pos < end:
            self._buf += memoryview(data)[pos:]
        return events

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held or still to be skipped (0 at a clean frame boundary)."""
        return len(self._buf) + self._discard

    def eof(self) -> None:
        """The peer closed its side: raise ProtocolError if that cut a frame short."""
        if self._discard:
            raise ProtocolError(f"truncated frame: {self._discard} bytes of an oversized body never arrived")
        if self._buf:
            if len(self._buf) < HEADER_LEN:
                raise ProtocolError(f"truncated frame: {len(self._buf)} of {HEADER_LEN} header bytes")
            raise ProtocolError(f"truncated frame: {len(self._buf)} of {self._need} bytes")


class KeyValue(NamedTuple):
    """One metadata pair of a Request (a key may repeat)."""

    key: str = ""
    value: str = ""


class Request(NamedTuple):
    """A ttrpc Request envelope: ``timeout_nano`` 0 means no deadline."""

    service: str = ""
    method: str = ""
    payload: bytes = b""
    timeout_nano: int = 0
    metadata: Sequence[KeyValue] = ()


class Response(NamedTuple):
    """A ttrpc Response envelope: ``status`` None when the peer left it out (Go's OK), an empty Status when it
    sent one (Rust's OK)."""

    status: Optional[Status] = None  # evaluated at run time: no X | None before 3.10
    payload: bytes = b""


def metadata_pairs(metadata: "Metadata | None") -> "list[KeyValue]":
    """Envelope KeyValues for a metadata mapping; a sequence value repeats the key, in order."""
    if not metadata:
        return []
    pairs: list[KeyValue] = []
    for key, value in metadata.items():
        if isinstance(value, str):
            pairs.append(KeyValue(key, value))
        else:
            pairs.extend(KeyValue(key, v) for v in value)
    return pairs


# The envelope is on every call's path, both ways (docs/benchmarks.md counts it per Stats call), so each
# codec has a straight path for the shapes every ttrpc peer writes (containerd's Go client and server, ours,
# ttrpc-rust): protobuf's own field order, one-byte tags, lengths under 16 KiB (two varint bytes), no
# unknown fields. Anything else, the malformed included, takes the general path, which reads by
# shimstats.protowire's rules and says why it refuses; both give the same answer where both apply
# (tests/unit/test_ttrpc_envelope.py against protobuf).


_HEADS: "dict[tuple[str, str], bytes]" = {}
"""Encoded service and method fields, by (service, method): a client calls a handful of methods, over and
over (at most _HEADS_KEPT are kept)."""
_HEADS_KEPT = 64
_PAYLOAD_TAGS = [b"\x1a" + bytes((size,)) for size in range(0x80)]
"""Request.payload's tag and length, for payloads under 128 bytes."""


def _head(service: str, method: str) -> bytes:
    head = string_field(1, service) + string_field(2, method)
    if len(_HEADS) < _HEADS_KEPT:
        _HEADS[service, method] = head
    return head


def encode_request(
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout_nano: int = 0,
    metadata: Iterable[KeyValue] = (),
) -> bytes:
    """Serialize a Request envelope, byte for byte as protobuf does (ValueError for a timeout outside
    int64, as protobuf)."""
    out = _HEADS.get((service, method)) or _head(service, method)
    size = len(payload)
    if size:
        out += (_PAYLOAD_TAGS[size] if size < 0x80 else b"\x1a" + encode_varint(size)) + payload
    if timeout_nano:  # varint_field's check and bytes, inline: it costs 2k instructions more a call
        if not -(1 << 63) <= timeout_nano < 1 << 63:
            raise ValueError(f"timeout_nano {timeout_nano} out of range for int64")
        out += b"\x20" + encode_varint(timeout_nano)
    for pair in metadata:
        body = string_field(1, pair.key) + string_field(2, pair.value)
        out += b"\x2a" + encode_varint(len(body)) + body
    return out


def decode_request(data: bytes) -> Request:
    """Parse a Request envelope; ProtocolError says why it is not one."""
    service = method = ""
    payload = b""
    timeout_nano = 0
    metadata: list[KeyValue] | None = None  # a list once a pair comes: most envelopes have none
    pos, end = 0, len(data)
    try:  # the common shape, field by field in number order; a field missing is a proto3 default
        if data[0] == 0x0A and data[1] < 0x80:
            pos = 2 + data[1]
            service = data[2:pos].decode()
        if pos < end and data[pos] == 0x12 and data[pos + 1] < 0x80:
            start = pos + 2
            pos = start + data[pos + 1]
            method = data[start:pos].decode()
        if pos < end and data[pos] == 0x1A:
            length = data[pos + 1]
            if length < 0x80:
                start = pos + 2
            elif data[pos + 2] < 0x80:
                length = length & 0x7F | data[pos + 2] << 7
                start = pos + 3
            else:
                return _decode_any_request(data)
            pos = start + length
            payload = data[start:pos]
        if pos < end and data[pos] == 0x20:
            timeout_nano, pos = read_varint(data, pos + 1)
            if timeout_nano >> 63:
                timeout_nano -= 1 << 64  # int64: two's complement
        while pos < end and data[pos] == 0x2A and data[pos + 1] < 0x80:
            stop = pos + 2 + data[pos + 1]
            raw = data[pos + 2 : stop]
            pair = _PAIRS.get(raw) or _pair(raw)
            if pair is None:
                return _decode_any_request(data)
            if metadata is None:
                metadata = [pair]
            else:
                metadata.append(pair)
            pos = stop
    except (IndexError, UnicodeDecodeError, WireError):
        return _decode_any_request(data)
    if pos != end:  # other fields, another order, or a field cut short
        return _decode_any_request(data)
    return _new(Request, (service, method, payload, timeout_nano, metadata or ()))


_PAIRS: "dict[bytes, KeyValue]" = {}
"""Metadata pairs by their encoded bytes: a caller sends the same few (a namespace) on every call (at most
_HEADS_KEPT are kept)."""


def _pair(raw: bytes) -> "KeyValue | None":
    """A KeyValue written as its key then its value, both short and UTF-8; None for anything else (which
    the general rules read, or refuse)."""
    if len(raw) < 4 or raw[0] != 0x0A or raw[1] >= 0x80:
        return None
    middle = 2 + raw[1]
    if middle + 2 > len(raw) or raw[middle] != 0x12 or middle + 2 + raw[middle + 1] != len(raw):
        return None
    try:
        pair: KeyValue = _new(KeyValue, (raw[2:middle].decode(), raw[middle + 2 :].decode()))
    except UnicodeDecodeError:
        return None
    if len(_PAIRS) < _HEADS_KEPT:
        _PAIRS[raw] = pair
    return pair


def _decode_any_request(data: bytes) -> Request:
    service = method = ""
    payload = b""
    timeout_nano = 0
    metadata: list[KeyValue] = []
    try:
        for number, value in fields(data):
            if isinstance(value, bytes):
                if number == 3:
                    payload = value
                elif number == 1:
                    service = utf8(value, 1)
                elif number == 2:
                    method = utf8(value, 2)
                elif number == 5:
                    metadata.append(_key_value(fields(value)))
            elif number == 4:
                timeout_nano = int64(value)
    except WireError as exc:
        raise ProtocolError(f"undecodable request envelope ({len(data)} bytes): {exc}") from None
    return Request(service, method, payload, timeout_nano, metadata)


def _key_value(found: Fields) -> KeyValue:
    key = value = ""
    for number, raw in found:
        if isinstance(raw, bytes):
            if number == 1:
                key = utf8(raw, 1)
            elif number == 2:
                value = utf8(raw, 2)
    return KeyValue(key, value)


def encode_response(payload: bytes, status: "Status | None" = None) -> bytes:
    """Serialize a Response envelope, byte for byte as protobuf does; OK leaves the status out, as
    containerd's Go server does.

    (ttrpc-rust sends an empty status instead; every client, ours included, reads both as OK.)
    """
    if status is None:
        return b"\x12" + encode_varint(len(payload)) + payload if payload else b""
    return message_field(1, encode_status(status)) + bytes_field(2, payload)


def decode_response(data: bytes) -> Response:
    """Parse a Response envelope; ProtocolError says why it is not one."""
    end = len(data)
    if end > 1 and data[0] == 0x12:  # the common answer: a payload alone
        length = data[1]
        if length < 0x80 and length + 2 == end:
            return _new(Response, (None, data[2:]))
        if length >= 0x80 and end > 2 and data[2] < 0x80 and (length & 0x7F | data[2] << 7) + 3 == end:
            return _new(Response, (None, data[3:]))
    payload = b""
    status: Fields | None = None
    try:
        for number, value in fields(data):
            if isinstance(value, bytes):
                if number == 2:
                    payload = value
                elif number == 1:  # a message field sent twice merges: its fields read as one
                    status = fields(value) if status is None else status + fields(value)
        return Response(None if status is None else status_from_fields(status), payload)
    except WireError as exc:
        raise ProtocolError(f"undecodable response envelope ({len(data)} bytes): {exc}") from None
