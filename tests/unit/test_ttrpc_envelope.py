"""The ttrpc envelope without protobuf (shimstats.ttrpc.framing, shimstats.protowire) against protobuf itself.

protobuf's generated classes (request_pb2, google.rpc.status_pb2) are the reference: the same bytes written
for every envelope, the same fields read from every envelope protobuf writes, and, for arbitrary bytes,
the same verdict (both read it, with the same fields, or both refuse it). The one known difference is
groups (wire types 3 and 4, which no proto3 message has): we refuse them, upb skips a well-formed one.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shimstats._proto.ttrpc import request_pb2
from shimstats.protowire import AnyMessage
from shimstats.ttrpc.framing import (
    KeyValue,
    ProtocolError,
    Request,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from shimstats.ttrpc.status import Status, make_status

BUDGET = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
texts = st.text(max_size=30)
blobs = st.binary(max_size=300)  # over 127 bytes: two-byte lengths
int64s = st.integers(-(2**63), 2**63 - 1)
int32s = st.integers(-(2**31), 2**31 - 1)
pairs = st.lists(st.tuples(texts, texts), max_size=4)
details = st.lists(st.tuples(texts, st.binary(max_size=20)), max_size=3)


def _pb_request(
    service: str, method: str, payload: bytes, timeout: int, metadata: list[tuple[str, str]]
) -> bytes:
    message = request_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout)
    message.metadata.extend(request_pb2.KeyValue(key=k, value=v) for k, v in metadata)
    return message.SerializeToString()


def _pb_status(code: int, message: str, extra: list[tuple[str, str | bytes]]) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for type_url, value in extra:
        status.details.add(type_url=type_url, value=value)
    return status


def _request_fields(request: Request | request_pb2.Request) -> tuple[object, ...]:
    metadata = [(pair.key, pair.value) for pair in request.metadata]
    return request.service, request.method, request.payload, request.timeout_nano, metadata


def _response_fields(response: Response | request_pb2.Response) -> tuple[object, ...]:
    if isinstance(response, request_pb2.Response):
        status = response.status if response.HasField("status") else None
    else:
        status = response.status
    if status is None:
        return None, response.payload
    found = [(d.type_url, d.value) for d in status.details]
    return (status.code, status.message, found), response.payload


@BUDGET
@given(texts, texts, blobs, int64s, pairs)
def test_requests_are_written_as_protobuf_writes_them(
    service: str, method: str, payload: bytes, timeout: int, metadata: list[tuple[str, str]]
) -> None:
    ours = encode_request(
        service, method, payload, timeout_nano=timeout, metadata=[KeyValue(k, v) for k, v in metadata]
    )
    assert ours == _pb_request(service, method, payload, timeout, metadata)


@BUDGET
@given(texts, texts, blobs, int64s, pairs)
def test_requests_protobuf_writes_are_read_back(
    service: str, method: str, payload: bytes, timeout: int, metadata: list[tuple[str, str]]
) -> None:
    request = decode_request(_pb_request(service, method, payload, timeout, metadata))
    assert _request_fields(request) == (service, method, payload, timeout, metadata)


@BUDGET
@given(st.one_of(st.none(), st.tuples(int32s, texts, details)), blobs)
def test_responses_are_written_and_read_as_protobuf_does(
    status: tuple[int, str, list[tuple[str, bytes]]] | None, payload: bytes
) -> None:
    reference = request_pb2.Response(payload=payload)
    ours: Status | None = None
    if status is not None:
        code, message, extra = status
        reference.status.CopyFrom(_pb_status(code, message, list(extra)))
        ours = make_status(code, message, [AnyMessage(t, v) for t, v in extra])
    wire = reference.SerializeToString()
    assert encode_response(payload, ours) == wire
    assert _response_fields(decode_response(wire)) == _response_fields(reference)
    assert decode_response(wire) == Response(ours, payload)


def test_an_int32_code_is_read_from_its_64_bit_varint() -> None:
    """A negative int32 travels as ten bytes; a peer may send a varint over 32 bits (its low 32 count)."""
    negative = request_pb2.Response(status=status_pb2.Status(code=-2)).SerializeToString()
    assert len(negative) == 2 + 11
    assert encode_response(b"", make_status(-2)) == negative
    response = decode_response(negative)
    assert response.status == Status(-2)
    wide = b"\x0a\x06\x08\x85\x80\x80\x80\x10"  # code = 2**32 + 5
    assert decode_response(wide).status == Status(request_pb2.Response.FromString(wide).status.code)


def test_a_status_sent_twice_merges_as_protobuf_merges_it() -> None:
    first = encode_response(b"", make_status(5, "first", [AnyMessage("t/a", b"1")]))
    second = encode_response(b"x", make_status(0, "", [AnyMessage("t/b", b"2")]))
    wire = first + second + b"\x0a\x02\x08\x07"  # and a third with only a code
    reference = request_pb2.Response.FromString(wire)
    assert _response_fields(decode_response(wire)) == _response_fields(reference)
    assert decode_response(wire).status == Status(
        7, "first", (AnyMessage("t/a", b"1"), AnyMessage("t/b", b"2"))
    )


def _field(number: int, body: bytes) -> bytes:
    assert number < 16
    assert len(body) < 128
    return bytes([number << 3 | 2, len(body)]) + body


@st.composite
def inner_fields(draw: st.DrawFn) -> bytes:
    """A field of a KeyValue, Status or Any: a short varint, UTF-8 text, or random bytes (numbers 1-3)."""
    number = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(("varint", "text", "raw")))
    if kind == "varint":
        return bytes([number << 3, draw(st.integers(0, 127))])
    body = draw(st.text(max_size=6)).encode() if kind == "text" else draw(st.binary(max_size=8))
    return _field(number, body[:127])


@st.composite
def envelope_like(draw: st.DrawFn) -> bytes:
    """Bytes near an envelope: random fields of numbers 1-5 (strings, messages, varints) around random bytes,
    nested once (metadata, status and its details are messages), then bytes changed or cut."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        number = draw(st.integers(1, 5))
        kind = draw(st.sampled_from(("ld", "nested", "varint", "junk")))
        if kind == "ld":
            parts.append(_field(number, draw(st.binary(max_size=12))))
        elif kind == "nested":
            parts.append(
                _field(number, b"".join(draw(inner_fields()) for _ in range(draw(st.integers(0, 3)))))
            )
        elif kind == "varint":
            parts.append(bytes([number << 3]) + draw(st.binary(min_size=1, max_size=11)))
        else:
            parts.append(draw(st.binary(max_size=6)))
    data = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def _is_group_refusal(refusal: str) -> bool:
    return "wire type 3" in refusal or "wire type 4" in refusal


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=60), envelope_like()))
def test_arbitrary_bytes_get_protobufs_verdict(data: bytes) -> None:
    readers: list[tuple[Callable[[bytes], tuple[object, ...]], Callable[[bytes], tuple[object, ...]]]] = [
        (
            lambda b: _request_fields(decode_request(b)),
            lambda b: _request_fields(request_pb2.Request.FromString(b)),
        ),
        (
            lambda b: _response_fields(decode_response(b)),
            lambda b: _response_fields(request_pb2.Response.FromString(b)),
        ),
    ]
    for ours, reference in readers:
        try:
            expected: tuple[object, ...] | None = reference(data)
        except DecodeError:
            expected = None
        refusal = ""
        try:
            got = ours(data)
        except ProtocolError as error:
            refusal = str(error)
        if refusal:
            assert expected is None or _is_group_refusal(refusal), f"upb read {expected!r}; we said {refusal}"
        else:
            assert got == expected, f"upb read {expected!r} where we read {got!r}"
