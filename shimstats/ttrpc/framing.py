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
from typing import NamedTuple, Union

from shimstats.protowire import (
    Fields,
    WireError,
    bytes_field,
    fields,
    int64,
    message_field,
    string_field,
    utf8,
    varint_field,
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
    metadata: "Sequence[KeyValue]" = ()


class Response(NamedTuple):
    """A ttrpc Response envelope: ``status`` None when the peer left it out (Go's OK), an empty Status when it
    sent one (Rust's OK)."""

    status: "Status | None" = None
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
    out = string_field(1, service) + string_field(2, method) + bytes_field(3, payload)
    if timeout_nano:
        out += varint_field(4, timeout_nano)
    for pair in metadata:
        out += message_field(5, string_field(1, pair.key) + string_field(2, pair.value))
    return out


def decode_request(data: bytes) -> Request:
    """Parse a Request envelope; ProtocolError says why it is not one."""
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
        return bytes_field(2, payload)
    return message_field(1, encode_status(status)) + bytes_field(2, payload)


def decode_response(data: bytes) -> Response:
    """Parse a Response envelope; ProtocolError says why it is not one."""
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
