"""containerd's runtime options: decoding runtimeoptions.v1.Options, and what the inner shim gets instead."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from shimstats._proto.cgroups.v1 import metrics_pb2
from shimstats.proxy.options import (
    RUNTIME_OPTIONS_TYPE,
    OptionsError,
    config_path_of,
    decode_any,
    for_inner,
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
