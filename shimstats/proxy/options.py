"""containerd's runtime options, as the proxy reads them and as the inner shim must get them.

containerd hands a shim its runtime options as a ``google.protobuf.Any`` twice: on the stdin of the
``start`` action and in ``CreateTaskRequest.options``. For a runtime that is neither runc nor runhcs, CRI
and ``ctr run --runtime-config-path`` send ``runtimeoptions.v1.Options {type_url=1, config_path=2,
config_body=3}`` (containerd pkg/runtimeoptions/v1/api.proto); Kata reads its own configuration file from
that ``config_path``.

When ``config_path`` names the proxy's TOML file, the inner shim must not see it (Kata would try to load it
as its own configuration, runc cannot decode the type at all): the proxy hands it ``inner_config_path``
instead, or no options when that is unset. Any other options reach the inner shim unchanged.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

__all__ = [
    "RUNTIME_OPTIONS_TYPE",
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


def _options_class() -> type[Message]:
    """runtimeoptions.v1.Options built from a descriptor (we have no .proto of it), in a private pool."""
    string, optional = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    fields = [
        descriptor_pb2.FieldDescriptorProto(name="type_url", number=1, type=string, label=optional),
        descriptor_pb2.FieldDescriptorProto(name="config_path", number=2, type=string, label=optional),
        descriptor_pb2.FieldDescriptorProto(
            name="config_body",
            number=3,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
            label=optional,
        ),
    ]
    file = descriptor_pb2.FileDescriptorProto(
        name="shimstats/proxy/runtimeoptions.proto",
        package="runtimeoptions.v1",
        syntax="proto3",
        message_type=[descriptor_pb2.DescriptorProto(name="Options", field=fields)],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(RUNTIME_OPTIONS_TYPE))


_Options = _options_class()


def decode_any(data: bytes) -> any_pb2.Any | None:
    """The Any containerd wrote on a shim's stdin, or None when it wrote nothing."""
    if not data:
        return None
    try:
        return any_pb2.Any.FromString(data)
    except DecodeError as exc:
        raise OptionsError(
            f"runtime options on stdin ({len(data)} bytes) are not a protobuf Any: {exc}"
        ) from None


def _is_runtime_options(options: any_pb2.Any) -> bool:
    return options.type_url.rpartition("/")[2] == RUNTIME_OPTIONS_TYPE


def runtime_options(config_path: str, type_url: str = RUNTIME_OPTIONS_TYPE) -> any_pb2.Any:
    """An Any holding ``runtimeoptions.v1.Options{config_path}``, as containerd sends it."""
    message = json_format.ParseDict({"config_path": config_path}, _Options())
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString())


def config_path_of(options: any_pb2.Any | None) -> str:
    """``config_path`` when ``options`` is a runtimeoptions.v1.Options, else ""."""
    if options is None or not _is_runtime_options(options):
        return ""
    message = _Options()
    try:
        message.ParseFromString(options.value)
    except DecodeError as exc:
        raise OptionsError(f"{options.type_url} does not decode: {exc}") from None
    return str(json_format.MessageToDict(message, preserving_proto_field_name=True).get("config_path", ""))


def for_inner(options: any_pb2.Any | None, own_config: str, inner_config_path: str) -> any_pb2.Any | None:
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
    from shimstats._proto.containerd.task.v2 import shim_pb2

    try:
        request = shim_pb2.CreateTaskRequest.FromString(payload)
    except DecodeError:
        return payload
    if not request.HasField("options"):
        return payload
    options = for_inner(request.options, own_config, inner_config_path)
    if options is request.options:
        return payload
    if options is None:
        request.ClearField("options")
    else:
        request.options.CopyFrom(options)
    return request.SerializeToString()
