"""containerd's runtime options, as the proxy reads them and as the inner shim must get them.

containerd hands a shim its runtime options as a ``google.protobuf.Any`` twice: on the stdin of the
``start`` action and in ``CreateTaskRequest.options``. For a runtime that is neither runc nor runhcs, CRI
and ``ctr run --runtime-config-path`` send ``runtimeoptions.v1.Options {type_url=1, config_path=2,
config_body=3}`` (containerd pkg/runtimeoptions/v1/api.proto); Kata reads its own configuration file from
that ``config_path``.

When ``config_path`` names the proxy's TOML file, the inner shim must not see it (Kata would try to load it
as its own configuration, runc cannot decode the type at all): the proxy hands it ``inner_config_path``
instead, or no options when that is unset. Any other options reach the inner shim unchanged.

Both messages, and the CreateTaskRequest around them, are read and written without the protobuf runtime
(shimstats.protowire): ``start`` waits for nothing else so long, and the serving process answers
containerd's first call (Create) without importing protobuf.
"""

# No ``from __future__ import annotations`` here: a NamedTuple's string annotations make typing compile
# each one, and the first compile() builds the AST types, ~10M instructions of every proxy start and
# delete (docs/benchmarks.md). Annotations that need the new syntax at runtime are quoted.

from typing import TypeVar

from shimstats.protowire import (
    AnyMessage,
    Fields,
    HasAny,
    WireError,
    any_message,
    encode_fields,
    fields,
    length_delimited_fields,
    message_field,
    utf8,
)

__all__ = [
    "RUNTIME_OPTIONS_TYPE",
    "AnyOptions",
    "OptionsError",
    "config_path_of",
    "decode_any",
    "for_inner",
    "inner_create",
    "runtime_options",
]

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
"""The message name; containerd's typeurl sends it as the bare type URL (a prefix is tolerated)."""


class OptionsError(ValueError):
    """Runtime options that do not decode."""


AnyOptions = AnyMessage
"""A ``google.protobuf.Any`` as the proxy reads and writes runtime options (shimstats.protowire's)."""


def decode_any(data: bytes) -> "AnyOptions | None":
    """The Any containerd wrote on a shim's stdin, or None when it wrote nothing."""
    if not data:
        return None
    try:
        return any_message(fields(data))
    except WireError as exc:
        message = f"runtime options on stdin ({len(data)} bytes) are not a protobuf Any: {exc}"
        raise OptionsError(message) from None


def _is_runtime_options(options: HasAny) -> bool:
    return options.type_url.rpartition("/")[2] == RUNTIME_OPTIONS_TYPE


def runtime_options(config_path: str, type_url: str = RUNTIME_OPTIONS_TYPE) -> AnyOptions:
    """An Any holding ``runtimeoptions.v1.Options{config_path}``, as containerd sends it."""
    return AnyOptions(type_url, encode_fields({2: config_path}))


def config_path_of(options: "HasAny | None") -> str:
    """``config_path`` when ``options`` is a runtimeoptions.v1.Options, else ""."""
    if options is None or not _is_runtime_options(options):
        return ""
    try:
        fields = length_delimited_fields(options.value, (1, 2))
        utf8(fields.get(1, b""), 1)  # type_url: a string, which protobuf checks too
        return utf8(fields.get(2, b""), 2)
    except WireError as exc:
        raise OptionsError(f"{options.type_url} does not decode: {exc}") from None


A = TypeVar("A", bound=HasAny)


def for_inner(options: "A | None", own_config: str, inner_config_path: str) -> "A | AnyOptions | None":
    """What the inner shim gets in place of ``options``.

    Options naming ``own_config`` (the proxy's file) become ``inner_config_path`` with the same type URL,
    or nothing when that is empty; all other options pass unchanged.
    """
    if options is None or not own_config or config_path_of(options) != own_config:
        return options
    if not inner_config_path:
        return None
    return runtime_options(inner_config_path, options.type_url)


_CREATE_OPTIONS = 10
"""``CreateTaskRequest.options``, a ``google.protobuf.Any`` (containerd api/runtime/task/v2/shim.proto)."""
_CREATE_STRINGS = frozenset((1, 2, 5, 6, 7, 8, 9))
"""id, bundle, stdin, stdout, stderr, checkpoint, parent_checkpoint: what protobuf checks for UTF-8."""
_CREATE_ROOTFS = 3
"""``repeated containerd.types.Mount rootfs``; every Mount field (type, source, target, options) is a
string (api/types/mount.proto)."""


def inner_create(payload: bytes, own_config: str, inner_config_path: str) -> bytes:
    """A CreateTaskRequest as the inner shim must get it: options naming ``own_config`` swapped (see
    ``for_inner``), every other byte as it came; a payload that does not decode (by protobuf's rules, the
    rootfs Mounts and strings included) is passed on as it came (not ours to judge: the inner shim answers
    it)."""
    bounds: list[tuple[int, int]] = []
    try:
        found = fields(payload, bounds)
        chosen = [
            i for i, (number, value) in enumerate(found) if number == _CREATE_OPTIONS and type(value) is bytes
        ]
        if not chosen:
            return payload
        _check_create(found)
        # Every occurrence of a message field merges into one, as if their fields were sent together.
        options = any_message([field for i in chosen for field in fields(_raw(found[i][1]))])
        swapped = for_inner(options, own_config, inner_config_path)
    except (WireError, OptionsError):
        return payload  # options that are not runtimeoptions we can read: not ours to judge either
    if swapped is options:
        return payload
    spliced = b"" if swapped is None else message_field(_CREATE_OPTIONS, swapped.encode())
    parts, kept = [], 0
    for index in chosen:  # the new field where the last one was, the others dropped
        start, stop = bounds[index]
        parts.append(payload[kept:start])
        kept = stop
    parts.append(spliced)
    parts.append(payload[kept:])
    return b"".join(parts)


def _raw(value: "int | bytes") -> bytes:
    return value if isinstance(value, bytes) else b""


def _check_create(found: Fields) -> None:
    """WireError where protobuf would refuse the request: a string that is not UTF-8, a Mount that does
    not decode."""
    for number, value in found:
        if type(value) is not bytes:
            continue
        if number in _CREATE_STRINGS:
            utf8(value, number)
        elif number == _CREATE_ROOTFS:
            for mount_number, mount_value in fields(value):
                if 1 <= mount_number <= 4 and type(mount_value) is bytes:
                    utf8(mount_value, mount_number)
