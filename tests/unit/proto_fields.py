"""A protobuf field's type as a .proto declaration spells it, read from the generated descriptors: for the
tests that hold our protos to upstream's field tables."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor


def field_kind(field: FieldDescriptor) -> str:
    """A field's type as a .proto declaration would spell it: 'uint64', 'repeated X', 'map<K, V>'."""
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = (field.message_type.fields_by_name[n] for n in ("key", "value"))
            return f"map<{field_kind(key)}, {field_kind(value)}>"
        base = field.message_type.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        base = _SCALARS[field.type]
    return f"repeated {base}" if _is_repeated(field) else base


def _is_repeated(field: FieldDescriptor) -> bool:
    """Read from the descriptor proto: FieldDescriptor.label is gone from newer protobuf releases."""
    message = descriptor_pb2.DescriptorProto()
    assert field.containing_type is not None
    field.containing_type.CopyToProto(message)
    (proto,) = (f for f in message.field if f.number == field.number)
    return proto.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


_SCALARS = {
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
}
