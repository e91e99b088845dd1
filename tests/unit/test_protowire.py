"""The proxy's protobuf-free reading and writing of runtime options, checked against protobuf itself (upb).

``start`` reads containerd's ``Any``/``runtimeoptions.v1.Options`` without the protobuf runtime
(shimstats.protowire); protobuf is the reference here: the same bytes out, the same fields in, and the
same inputs refused, except groups (wire types 3 and 4), which we refuse and upb skips.
"""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from shimstats.protowire import WireError, length_delimited_fields, utf8
from shimstats.proxy.options import (
    RUNTIME_OPTIONS_TYPE,
    AnyOptions,
    OptionsError,
    config_path_of,
    decode_any,
    runtime_options,
)


def _options_class() -> type[Message]:
    """runtimeoptions.v1.Options {type_url = 1, config_path = 2 (strings), config_body = 3 (bytes)}, as
    containerd's pkg/runtimeoptions/v1/api.proto declares it, built from a descriptor."""
    string, blob = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    fields = [
        descriptor_pb2.FieldDescriptorProto(name=name, number=number, type=kind, label=optional)
        for name, number, kind in (
            ("type_url", 1, string),
            ("config_path", 2, string),
            ("config_body", 3, blob),
        )
    ]
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/runtimeoptions.proto",
        package="runtimeoptions.v1",
        syntax="proto3",
        message_type=[descriptor_pb2.DescriptorProto(name="Options", field=fields)],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(RUNTIME_OPTIONS_TYPE))


Options = _options_class()
texts = st.text(max_size=40)
blobs = st.binary(max_size=40)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields an Any does not know, of every wire type but groups, and known numbers of another type."""
    number = draw(st.integers(min_value=1, max_value=5000))
    wire = draw(st.sampled_from((0, 1, 2, 5)))
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(draw(st.integers(min_value=0, max_value=2**64 - 1)))
    if wire == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if number in (1, 2):
        return b""  # a length-delimited 1 or 2 is the real field, drawn below
    body = draw(blobs)
    return key + _varint(len(body)) + body


@given(texts, blobs)
def test_an_any_is_written_as_protobuf_writes_it(type_url: str, value: bytes) -> None:
    assert (
        AnyOptions(type_url, value).encode()
        == any_pb2.Any(type_url=type_url, value=value).SerializeToString()
    )


@given(texts, texts)
def test_runtime_options_are_written_as_protobuf_writes_them(path: str, type_url: str) -> None:
    ours = runtime_options(path, type_url)
    message = Options()
    message.config_path = path  # type: ignore[attr-defined]
    assert ours.value == message.SerializeToString()
    assert ours.encode() == any_pb2.Any(type_url=type_url, value=ours.value).SerializeToString()


@given(st.lists(st.one_of(unknown_fields(), st.tuples(st.sampled_from((1, 2)), texts)), max_size=8))
def test_an_any_is_read_as_protobuf_reads_it(parts: list[bytes | tuple[int, str]]) -> None:
    """Unknown fields anywhere, known ones repeated (the last wins) or of another wire type (skipped)."""
    data = b""
    for part in parts:
        if isinstance(part, tuple):
            number, text = part
            raw = text.encode() if number == 1 else text.encode() * 2
            part = _varint(number << 3 | 2) + _varint(len(raw)) + raw
        data += part
    reference = any_pb2.Any.FromString(data)
    if not data:
        assert decode_any(data) is None
        return
    assert decode_any(data) == AnyOptions(reference.type_url, reference.value)


@given(st.binary(max_size=60))
def test_bytes_protobuf_refuses_are_refused(data: bytes) -> None:
    try:
        reference: any_pb2.Any | None = any_pb2.Any.FromString(data)
    except DecodeError:
        reference = None
    refusal = ""
    try:
        ours = decode_any(data)
    except OptionsError as exc:
        refusal = str(exc)
    if refusal:
        assert reference is None or "wire type" in refusal, f"upb read {reference!r}; we said {refusal}"
        return
    assert reference is not None, f"upb refuses {data!r}; we read {ours!r}"
    assert ours == (AnyOptions(reference.type_url, reference.value) if data else None)


@given(texts, texts, blobs)
def test_config_path_is_read_as_protobuf_reads_it(path: str, type_url: str, body: bytes) -> None:
    message = Options()
    message.type_url, message.config_path, message.config_body = type_url, path, body  # type: ignore[attr-defined]
    value = message.SerializeToString()
    assert config_path_of(AnyOptions(RUNTIME_OPTIONS_TYPE, value)) == path


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x0a\x05abc", "needs 5 bytes"),
        (b"\x0a", "truncated varint"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x00\x01", "field number 0"),
        (b"\x85\x80\x80\x80\x10\x00", "field number 536870912"),  # a tag over 32 bits
        (b"\x0b\x0c", "wire type 3"),
        (b"\x0a\x02\xff\xfe", "not UTF-8"),
    ],
)
def test_what_is_refused_says_why(data: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        _string_field_1(data)


def _string_field_1(data: bytes) -> str:
    return utf8(length_delimited_fields(data, (1,)).get(1, b""), 1)
