"""containerd's runtime options, as the proxy reads them and as the inner shim must get them.

containerd hands a shim its runtime options as a ``google.protobuf.Any`` twice: on the stdin of the
``start`` action and in ``CreateTaskRequest.options``. For a runtime that is neither runc nor runhcs, CRI
and ``ctr run --runtime-config-path`` send ``runtimeoptions.v1.Options {type_url=1, config_path=2,
config_body=3}`` (containerd pkg/runtimeoptions/v1/api.proto); Kata reads its own configuration file from
that ``config_path``.

When ``config_path`` names the proxy's TOML file, the inner shim must not see it (Kata would try to load it
as its own configuration, runc cannot decode the type at all): the proxy hands it ``inner_config_path``
instead, or no options when that is unset. Any other options reach the inner shim unchanged.

Both messages are read and written without the protobuf runtime (shimstats.proxy.protowire: ``start``
waits for nothing else so long); only ``inner_create``, in the serving process, uses protobuf, for the
CreateTaskRequest around them.
"""

# No ``from __future__ import annotations`` here: a NamedTuple's string annotations make typing compile
# each one, and the first compile() builds the AST types, ~10M instructions of every proxy start and
# delete (docs/benchmarks.md). Annotations that need the new syntax at runtime are quoted.

from typing import NamedTuple, Protocol, TypeVar

from shimstats.proxy.protowire import WireError, encode_fields, length_delimited_fields, utf8

__all__ = [
    "RUNTIME_OPTIONS_TYPE",
    "AnyOptions",
    "OptionsError",
    "config_path_of",
    "decode_any",
    "for_inner",
    "inner_create",
    "preload",
    "runtime_options",
]

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
"""The message name; containerd's typeurl sends it as the bare type URL (a prefix is tolerated)."""


class OptionsError(ValueError):
    """Runtime options that do not decode."""


class HasAny(Protocol):
    """A ``google.protobuf.Any`` (protobuf's or ours): a type URL and the message's bytes."""

    @property
    def type_url(self) -> str: ...

    @property
    def value(self) -> bytes: ...


class AnyOptions(NamedTuple):
    """A ``google.protobuf.Any``: ``type_url`` = 1, ``value`` = 2."""

    type_url: str
    value: bytes

    def encode(self) -> bytes:
        """The Any's bytes, as protobuf serialises it."""
        return encode_fields({1: self.type_url, 2: self.value})


def decode_any(data: bytes) -> "AnyOptions | None":
    """The Any containerd wrote on a shim's stdin, or None when it wrote nothing."""
    if not data:
        return None
    try:
        fields = length_delimited_fields(data, (1, 2))
        return AnyOptions(utf8(fields.get(1, b""), 1), fields.get(2, b""))
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


def preload() -> None:
    """Import what ``inner_create`` needs (the Task messages) ahead of the first Create."""
    from shimstats._proto.containerd.task.v2 import shim_pb2  # noqa: F401


def inner_create(payload: bytes, own_config: str, inner_config_path: str) -> bytes:
    """A CreateTaskRequest as the inner shim must get it: options naming ``own_config`` swapped (see
    ``for_inner``), everything else byte for byte; a payload that does not decode is passed on as it came
    (not ours to judge: the inner shim answers it)."""
    from google.protobuf.message import DecodeError

    from shimstats._proto.containerd.task.v2 import shim_pb2

    try:
        request = shim_pb2.CreateTaskRequest.FromString(payload)
    except DecodeError:
        return payload
    if not request.HasField("options"):
        return payload
    try:
        options = for_inner(request.options, own_config, inner_config_path)
    except OptionsError:
        return payload  # options that are not runtimeoptions we can read: not ours to judge either
    if options is request.options:
        return payload
    if options is None:
        request.ClearField("options")
    else:
        request.options.type_url = options.type_url
        request.options.value = options.value
    return request.SerializeToString()
