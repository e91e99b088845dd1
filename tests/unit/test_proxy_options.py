"""containerd's runtime options: decoding runtimeoptions.v1.Options, and what the inner shim gets instead."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from shimstats._proto.cgroups.v1 import metrics_pb2
from shimstats._proto.containerd.task.v2 import shim_pb2
from shimstats._proto.containerd.types import mount_pb2
from shimstats.proxy.options import (
    RUNTIME_OPTIONS_TYPE,
    OptionsError,
    config_path_of,
    decode_any,
    for_inner,
    inner_create,
    runtime_options,
)

OURS = "/etc/shimstats/kata.toml"
KATA = "/opt/kata/share/defaults/kata-containers/configuration-clh.toml"


def test_wire_form_is_containerds() -> None:
    """runtimeoptions.v1.Options.config_path is field 2, a string: tag (2 << 3 | 2) = 0x12, length, bytes."""
    value = runtime_options(OURS)
    assert value.type_url == RUNTIME_OPTIONS_TYPE
    assert value.value == bytes([0x12, len(OURS)]) + OURS.encode()


def test_config_path_is_read_back_and_other_fields_do_not_disturb_it() -> None:
    # type_url (field 1) and config_body (field 3) around config_path, as containerd 1.7 may send them.
    type_url, body = b"io.containerd.kata.v2.Options", b"x = 1\n"
    value = bytes([0x0A, len(type_url)]) + type_url + bytes([0x12, len(OURS)]) + OURS.encode()
    value += bytes([0x1A, len(body)]) + body
    assert config_path_of(any_pb2.Any(type_url=RUNTIME_OPTIONS_TYPE, value=value)) == OURS


def test_a_prefixed_type_url_is_the_same_type() -> None:
    options = runtime_options(OURS, f"type.googleapis.com/{RUNTIME_OPTIONS_TYPE}")
    assert config_path_of(options) == OURS


def test_other_types_have_no_config_path() -> None:
    other = any_pb2.Any(
        type_url="io.containerd.cgroups.v1.Metrics", value=metrics_pb2.Metrics().SerializeToString()
    )
    assert config_path_of(other) == ""
    assert config_path_of(None) == ""


def test_stdin_decoding() -> None:
    assert decode_any(b"") is None
    options = runtime_options(OURS)
    decoded = decode_any(options.encode())
    assert decoded == options
    with pytest.raises(OptionsError, match="not a protobuf Any"):
        decode_any(b"\xff\xff\xff")


def test_our_options_become_the_inner_shims_config_path_with_the_same_type_url() -> None:
    prefixed = f"type.googleapis.com/{RUNTIME_OPTIONS_TYPE}"
    swapped = for_inner(runtime_options(OURS, prefixed), OURS, KATA)
    assert swapped is not None
    assert swapped.type_url == prefixed
    assert config_path_of(swapped) == KATA


def test_our_options_are_dropped_when_the_inner_shim_has_no_config_path() -> None:
    assert for_inner(runtime_options(OURS), OURS, "") is None


@pytest.mark.parametrize(
    "options",
    [
        None,
        runtime_options(KATA),  # Kata's own ConfigPath while our config comes from $SHIMSTATS_CONFIG
        any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\x10\x01"),
    ],
)
def test_anything_else_passes_unchanged(options: any_pb2.Any | None) -> None:
    assert for_inner(options, OURS, "/other.toml") is options
    assert for_inner(options, "", "/other.toml") is options


# -- inner_create: the CreateTaskRequest splice, against protobuf's own reading and writing -----------------


def _protobuf_inner_create(payload: bytes, own_config: str, inner_config_path: str) -> bytes:
    """What inner_create did with protobuf's generated classes (before issue 16): the reference."""
    try:
        request = shim_pb2.CreateTaskRequest.FromString(payload)
    except DecodeError:
        return payload
    if not request.HasField("options"):
        return payload
    try:
        options = for_inner(request.options, own_config, inner_config_path)
    except OptionsError:
        return payload
    if options is request.options:
        return payload
    if options is None:
        request.ClearField("options")
    else:
        request.options.type_url = options.type_url
        request.options.value = options.value
    return request.SerializeToString()


texts = st.text(max_size=12)
paths = st.sampled_from((OURS, KATA, ""))
option_values = st.one_of(
    st.none(),
    st.builds(runtime_options, paths, st.sampled_from((RUNTIME_OPTIONS_TYPE, "t"))),
    st.builds(any_pb2.Any, type_url=texts, value=st.binary(max_size=12)),
)
mounts = st.builds(
    mount_pb2.Mount, type=texts, source=texts, target=texts, options=st.lists(texts, max_size=3)
)


@st.composite
def create_requests(draw: st.DrawFn) -> bytes:
    """A CreateTaskRequest as containerd writes it, sometimes followed by fields our copy of shim.proto does
    not know (upstream's oom_path = 11 is one)."""
    options = draw(option_values)
    request = shim_pb2.CreateTaskRequest(
        id=draw(texts),
        bundle=draw(texts),
        rootfs=draw(st.lists(mounts, max_size=2)),
        terminal=draw(st.booleans()),
        stdin=draw(texts),
        stdout=draw(texts),
        stderr=draw(texts),
        checkpoint=draw(texts),
        parent_checkpoint=draw(texts),
    )
    if options is not None:
        request.options.type_url, request.options.value = options.type_url, options.value
    oom_path = draw(texts).encode()
    unknown = bytes([0x5A, len(oom_path)]) + oom_path if oom_path else b""
    return request.SerializeToString() + unknown


@settings(max_examples=300, deadline=None)
@given(payload=create_requests(), inner_config_path=st.sampled_from((KATA, "")))
def test_inner_create_writes_what_protobuf_writes(payload: bytes, inner_config_path: str) -> None:
    assert inner_create(payload, OURS, inner_config_path) == _protobuf_inner_create(
        payload, OURS, inner_config_path
    )


def _options_field(any_bytes: bytes) -> bytes:
    return bytes([0x52, len(any_bytes)]) + any_bytes


OPTIONS_PIECES = (
    runtime_options(OURS).encode(),
    runtime_options(OURS).encode()[: 2 + len(RUNTIME_OPTIONS_TYPE)],  # only the type URL
    runtime_options(OURS).encode()[2 + len(RUNTIME_OPTIONS_TYPE) :],  # only the value
    b"\x0a\x02\xff\xfe",  # a type URL that is not UTF-8
    b"\x0a\x05abc",  # an Any that does not decode
)


@st.composite
def garbled_create_requests(draw: st.DrawFn) -> bytes:
    """A request, with options fields inserted anywhere (a message field sent twice merges), then bytes
    changed or the end cut off."""
    payload = bytearray(draw(create_requests()))
    for piece in draw(st.lists(st.sampled_from(OPTIONS_PIECES), max_size=3)):
        position = draw(st.sampled_from(sorted({0, len(payload)})))
        payload[position:position] = _options_field(piece)
    for _ in range(draw(st.integers(0, 2))):
        if payload:
            payload[draw(st.integers(0, len(payload) - 1))] = draw(st.integers(0, 255))
    return bytes(payload[: draw(st.integers(0, len(payload)))]) if draw(st.booleans()) else bytes(payload)


@settings(max_examples=500, deadline=None)
@given(payload=garbled_create_requests(), inner_config_path=st.sampled_from((KATA, "")))
def test_inner_create_reads_what_protobuf_reads(payload: bytes, inner_config_path: str) -> None:
    """Passed on as it came exactly when protobuf passes it on; otherwise the same request (ours keeps the
    other fields where they were, protobuf writes them in number order)."""
    ours = inner_create(payload, OURS, inner_config_path)
    reference = _protobuf_inner_create(payload, OURS, inner_config_path)
    if reference == payload:
        assert ours == payload
        return
    assert ours != payload
    parsed = [shim_pb2.CreateTaskRequest.FromString(b).SerializeToString() for b in (ours, reference)]
    assert parsed[0] == parsed[1]


def test_inner_create_keeps_every_other_byte() -> None:
    """Fields out of number order and a long varint stay as they came; only field 10 is replaced."""
    head = b"\x12\x03/b1" + b"\x0a\x02c1" + b"\x20\x81\x00"  # bundle before id; terminal as a 2-byte varint
    ours = runtime_options(OURS).encode()
    tail = b"\x3a\x03err"
    payload = head + bytes([0x52, len(ours)]) + ours + tail
    swapped = runtime_options(KATA).encode()
    assert inner_create(payload, OURS, KATA) == head + bytes([0x52, len(swapped)]) + swapped + tail
    assert inner_create(payload, OURS, "") == head + tail
    assert inner_create(payload, "/not/ours.toml", KATA) == payload
