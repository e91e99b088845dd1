"""The protobuf wire format of small messages of string and bytes fields, without the protobuf runtime.

The proxy's ``start`` reads containerd's runtime options (a ``google.protobuf.Any`` holding a
``runtimeoptions.v1.Options``: two messages of string and bytes fields) on every container start, CRI's
included, and containerd waits for it. Importing the protobuf runtime to read them cost ``start`` some 67M
instructions (about 18 ms here; docs/benchmarks.md), more than the rest of its work, so ``start`` reads and
writes these two with the rules below; everything else stays on protobuf.

Reading follows the parser protobuf ships (upb): fields in any order, the last of a repeated singular field
wins, unknown fields and known fields of another wire type are skipped, a string must be UTF-8. Refused
with WireError: a truncated varint or field, a varint longer than 10 bytes, a field number of 0 or over
2**29 - 1, and groups (wire types 3 and 4, which no proto3 message uses; upb would skip a well-formed one).
Writing is proto3's: fields in number order, an empty one left out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

__all__ = ["LENGTH_DELIMITED", "WireError", "encode_fields", "length_delimited_fields", "utf8"]

LENGTH_DELIMITED = 2
_FIXED = {1: 8, 5: 4}
"""Wire types of a fixed size: 64-bit, 32-bit."""


class WireError(ValueError):
    """Bytes that are not a protobuf message (the message says where)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(pos, min(pos + 10, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, index + 1
        shift += 7
    if len(data) - pos >= 10:
        raise WireError(f"varint longer than 10 bytes at offset {pos}")
    raise WireError(f"truncated varint at offset {pos}")


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | None]]:
    """(field number, wire type, bytes of a length-delimited field else None), in order."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0 or key > 0xFFFFFFFF:  # a tag is 32 bits: field numbers end at 2**29 - 1
            raise WireError(f"field number {number} at offset {pos}")
        if wire == 0:
            _, pos = _varint(data, pos)
            yield number, wire, None
        elif wire == LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            if length > end - pos:
                raise WireError(f"field {number} needs {length} bytes, {end - pos} left")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire in _FIXED:
            if _FIXED[wire] > end - pos:
                raise WireError(f"field {number} truncated")
            pos += _FIXED[wire]
            yield number, wire, None
        else:
            raise WireError(f"field {number} has wire type {wire} (a group, or no wire type at all)")


def length_delimited_fields(data: bytes, numbers: Collection[int]) -> dict[int, bytes]:
    """The bytes of the length-delimited fields ``numbers`` of a message, each the last one sent; a field
    not sent is absent. WireError when ``data`` is not a message."""
    found: dict[int, bytes] = {}
    for number, wire, value in _fields(data):
        if wire == LENGTH_DELIMITED and value is not None and number in numbers:
            found[number] = value
    return found


def utf8(raw: bytes, number: int) -> str:
    """A string field's text; WireError when it is not UTF-8 (protobuf refuses such a proto3 string)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"string field {number} is not UTF-8") from None


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_fields(fields: Mapping[int, str | bytes]) -> bytes:
    """A message of length-delimited fields (number → str or bytes), as protobuf writes a proto3 one."""
    out = bytearray()
    for number in sorted(fields):
        value = fields[number]
        raw = value.encode("utf-8") if isinstance(value, str) else value
        if raw:
            out += _encode_varint(number << 3 | LENGTH_DELIMITED) + _encode_varint(len(raw)) + raw
    return bytes(out)
