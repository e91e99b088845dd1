"""The protobuf wire format of small messages, without the protobuf runtime.

Two places read and write a few tiny messages on every container start, where importing the protobuf
runtime costs more than the work itself (docs/benchmarks.md): the proxy's ``start`` reads containerd's
runtime options (a ``google.protobuf.Any`` holding a ``runtimeoptions.v1.Options``), some 67M instructions
(~18 ms) of protobuf for two messages; and every ttrpc call carries an envelope (shimstats.ttrpc.framing:
Request, Response, ``google.rpc.Status``, ``google.protobuf.Any``), whose ~52M instructions of protobuf
containerd's first call to the proxy's serving process (Create) waited for. Those messages are read and
written here with the rules below; every other message stays on protobuf.

Reading follows the parser protobuf ships (upb): fields in any order, the last of a repeated singular field
wins (a message field merges: callers pass the fields of every occurrence together), unknown fields and
known fields of another wire type are skipped, a string must be UTF-8, an ``int32`` is the low 32 bits of a
64-bit varint and an ``int64`` its two's complement. Refused with WireError: a truncated varint or field, a
varint longer than 10 bytes, a field number of 0 or over 2**29 - 1, and groups (wire types 3 and 4, which
no proto3 message uses; upb would skip a well-formed one). Writing is proto3's: fields in number order, an
empty or zero scalar left out, a message field (set) or repeated element always written.
"""

# No ``from __future__ import annotations``: a NamedTuple's string annotations make typing compile each
# one, and the first compile() builds the AST types, ~10M instructions of every proxy start (see
# shimstats.proxy.options). Annotations that need the new syntax at runtime are quoted.

from collections.abc import Collection, Mapping
from typing import NamedTuple, Protocol, Union

__all__ = [
    "LENGTH_DELIMITED",
    "AnyMessage",
    "Fields",
    "HasAny",
    "WireError",
    "any_message",
    "bytes_field",
    "encode_fields",
    "encode_varint",
    "fields",
    "int32",
    "int64",
    "length_delimited_fields",
    "message_field",
    "read_varint",
    "string_field",
    "utf8",
    "varint_field",
]

LENGTH_DELIMITED = 2
_FIXED = {1: 8, 5: 4}
"""Wire types of a fixed size: 64-bit, 32-bit."""
_U64 = (1 << 64) - 1

Fields = list[tuple[int, Union[int, bytes]]]
"""A message's varint and length-delimited fields in wire order: (number, value), the value an ``int`` for
a varint (unsigned 64-bit) and ``bytes`` for a length-delimited field; fixed-size fields are left out (no
message read here has one)."""


class WireError(ValueError):
    """Bytes that are not a protobuf message (the message says where)."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` (as an unsigned 64-bit value) and the offset after it; WireError if none.

    Up to six bytes (a deadline in nanoseconds of up to 73 minutes, every length) are read unrolled: a loop
    costs twice as many instructions, and an envelope's deadline is on every call's path (the kubelet's
    is two minutes: six bytes)."""
    try:
        byte = data[pos]
        if byte < 0x80:
            return byte, pos + 1
        value = byte & 0x7F
        byte = data[pos + 1]
        if byte < 0x80:
            return value | byte << 7, pos + 2
        value |= (byte & 0x7F) << 7
        byte = data[pos + 2]
        if byte < 0x80:
            return value | byte << 14, pos + 3
        value |= (byte & 0x7F) << 14
        byte = data[pos + 3]
        if byte < 0x80:
            return value | byte << 21, pos + 4
        value |= (byte & 0x7F) << 21
        byte = data[pos + 4]
        if byte < 0x80:
            return value | byte << 28, pos + 5
        value |= (byte & 0x7F) << 28
        byte = data[pos + 5]
        if byte < 0x80:
            return value | byte << 35, pos + 6
        value |= (byte & 0x7F) << 35
        for index in range(pos + 6, pos + 10):
            byte = data[index]
            value |= (byte & 0x7F) << 7 * (index - pos)
            if byte < 0x80:
                return value & _U64, index + 1
    except IndexError:
        raise WireError(f"truncated varint at offset {pos}") from None
    raise WireError(f"varint longer than 10 bytes at offset {pos}")


def fields(data: bytes, bounds: "list[tuple[int, int]] | None" = None) -> Fields:
    """Every varint and length-delimited field of a message, in order; WireError when ``data`` is not one.
    ``bounds``, when given, gets each of those fields' (start, stop) offsets in ``data``, tag included, in
    the same order (to splice a field and keep every other byte).

    The envelope of every ttrpc call goes through here, so the common case (one-byte tags and lengths) is
    read inline and only longer varints take the general path."""
    found: Fields = []
    append = found.append
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key = data[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(data, pos)
            if key > 0xFFFFFFFF:  # a tag is 32 bits: field numbers end at 2**29 - 1
                raise WireError(f"field number {key >> 3} at offset {pos}")
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at offset {pos}")
        if wire == LENGTH_DELIMITED:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = read_varint(data, pos)
            stop = pos + length
            if stop > end:
                raise WireError(f"field {number} needs {length} bytes, {end - pos} left")
            append((number, data[pos:stop]))
            pos = stop
        elif wire == 0:
            if pos < end and data[pos] < 0x80:
                append((number, data[pos]))
                pos += 1
            else:
                value, pos = read_varint(data, pos)
                append((number, value))
        elif wire in _FIXED:
            if _FIXED[wire] > end - pos:
                raise WireError(f"field {number} truncated")
            pos += _FIXED[wire]
            continue
        else:
            raise WireError(f"field {number} has wire type {wire} (a group, or no wire type at all)")
        if bounds is not None:
            bounds.append((start, pos))
    return found


def length_delimited_fields(data: bytes, numbers: Collection[int]) -> dict[int, bytes]:
    """The bytes of the length-delimited fields ``numbers`` of a message, each the last one sent; a field
    not sent is absent. WireError when ``data`` is not a message."""
    found: dict[int, bytes] = {}
    for number, value in fields(data):
        if number in numbers and type(value) is bytes:
            found[number] = value
    return found


def utf8(raw: bytes, number: int) -> str:
    """A string field's text; WireError when it is not UTF-8 (protobuf refuses such a proto3 string)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"string field {number} is not UTF-8") from None


def int32(value: int) -> int:
    """An ``int32`` field's value from its varint: the low 32 bits, signed, as protobuf reads it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def int64(value: int) -> int:
    """An ``int64`` field's value from its (64-bit) varint: two's complement."""
    return value - (1 << 64) if value >> 63 else value


class HasAny(Protocol):
    """A ``google.protobuf.Any`` (protobuf's or ours): a type URL and the message's bytes."""

    @property
    def type_url(self) -> str: ...

    @property
    def value(self) -> bytes: ...


class AnyMessage(NamedTuple):
    """A ``google.protobuf.Any``: ``type_url`` = 1, ``value`` = 2 (google/protobuf/any.proto)."""

    type_url: str = ""
    value: bytes = b""

    def encode(self) -> bytes:
        """The Any's bytes, as protobuf serialises it."""
        return string_field(1, self.type_url) + bytes_field(2, self.value)


def any_message(found: Fields) -> AnyMessage:
    """The Any the fields of one message (or of every occurrence of a message field, merged) make."""
    type_url, value = "", b""
    for number, raw in found:
        if type(raw) is bytes:
            if number == 1:
                type_url = utf8(raw, 1)
            elif number == 2:
                value = raw
    return AnyMessage(type_url, value)


# -- writing ------------------------------------------------------------------------------------------------

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def encode_varint(value: int) -> bytes:
    """A varint; a negative value as its 64-bit two's complement (ten bytes), as protobuf writes an int.
    Up to six bytes are written unrolled (see read_varint)."""
    if 0 <= value < 1 << 14:
        if value < 0x80:
            return _ONE_BYTE[value]
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 < value < 1 << 42:  # every byte spelt out: a loop or a shared prefix costs more
        if value < 1 << 21:
            return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
        if value < 1 << 28:
            return bytes(
                (value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14 & 0x7F | 0x80, value >> 21)
            )
        if value < 1 << 35:
            return bytes(
                (
                    value & 0x7F | 0x80,
                    value >> 7 & 0x7F | 0x80,
                    value >> 14 & 0x7F | 0x80,
                    value >> 21 & 0x7F | 0x80,
                    value >> 28,
                )
            )
        return bytes(
            (
                value & 0x7F | 0x80,
                value >> 7 & 0x7F | 0x80,
                value >> 14 & 0x7F | 0x80,
                value >> 21 & 0x7F | 0x80,
                value >> 28 & 0x7F | 0x80,
                value >> 35,
            )
        )
    value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_field(number: int, raw: bytes) -> bytes:
    """A length-delimited field, written even when empty (a set message field, a repeated element)."""
    return encode_varint(number << 3 | LENGTH_DELIMITED) + encode_varint(len(raw)) + raw


def bytes_field(number: int, raw: bytes) -> bytes:
    """A ``bytes`` field as proto3 writes it: nothing when empty."""
    return message_field(number, raw) if raw else b""


def string_field(number: int, text: str) -> bytes:
    """A ``string`` field as proto3 writes it: UTF-8, nothing when empty (UnicodeEncodeError, a ValueError,
    for text that has no UTF-8, as protobuf refuses it)."""
    return message_field(number, text.encode("utf-8")) if text else b""


def varint_field(number: int, value: int, bits: int = 64) -> bytes:
    """An ``int32``/``int64`` field (``bits``) as proto3 writes it: nothing when 0; ValueError outside the
    type's range, as protobuf refuses it."""
    if not value:
        return b""
    limit = 1 << (bits - 1)
    if not -limit <= value < limit:
        raise ValueError(f"value {value} out of range for field {number} (int{bits})")
    return encode_varint(number << 3) + encode_varint(value)


def encode_fields(values: "Mapping[int, str | bytes]") -> bytes:
    """A message of length-delimited fields (number → str or bytes), as protobuf writes a proto3 one."""
    out = b""
    for number in sorted(values):
        value = values[number]
        out += string_field(number, value) if isinstance(value, str) else bytes_field(number, value)
    return out
